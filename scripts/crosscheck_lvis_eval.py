"""Cross-check `glipcli.bench.lvis_eval` against the official LVIS API on random federated data.

    pip install --no-deps --target /tmp/lvisapi lvis==0.5.3
    python scripts/crosscheck_lvis_eval.py /tmp/lvisapi

Builds random LVIS v1 ground truths (8 categories of all three frequencies, 40 images with random
`neg_category_ids` and `not_exhaustive_category_ids`) and detections (jittered true boxes and false
positives), and compares AP, AP50, AP75, APs/m/l and APr/c/f of `lvis_box_ap` (fixed-AP budget, far
from binding here) with `LVISEval` run with no per-image limit (`max_dets=-1`, as the fixed-AP protocol
runs it). Not a test: the `lvis` package is not a dependency (it needs `np.float`, gone from numpy, and
imports cv2/matplotlib for drawing; both are worked around here). Prints the largest difference.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import sys
import types

import numpy as np


def random_case(seed: int) -> tuple[dict, list[dict]]:
    rng = np.random.default_rng(seed)
    cats = list(range(1, 9))
    images, anns, dets = [], [], []
    for img in range(1, 41):
        present = set()
        for _ in range(rng.integers(0, 7)):
            cat = int(rng.choice(cats))
            w, h = (float(v) for v in rng.choice([8, 20, 40, 80, 150], size=2))
            x, y = (float(v) for v in rng.uniform(0, 300, size=2))
            anns.append({"id": len(anns) + 1, "image_id": img, "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h, "segmentation": [[x, y, x, y + h, x + w, y + h, x + w, y]]})
            present.add(cat)
            for _ in range(rng.integers(0, 3)):
                j = rng.normal(0, 0.1, 2) * [w, h]
                dets.append({"image_id": img, "category_id": cat, "bbox": [x + j[0], y + j[1], w, h],
                             "score": float(rng.uniform())})
        for _ in range(rng.integers(0, 6)):
            dets.append({"image_id": img, "category_id": int(rng.choice(cats)),
                         "bbox": [*(float(v) for v in rng.uniform(0, 300, 2)), float(rng.choice([10, 50, 120])), 40.0],
                         "score": float(rng.uniform())})
        absent = [c for c in cats if c not in present]
        images.append({"id": img, "width": 500, "height": 500,
                       "neg_category_ids": [c for c in absent if rng.uniform() < 0.5],
                       "not_exhaustive_category_ids": [c for c in sorted(present) if rng.uniform() < 0.3]})
    categories = [{"id": c, "name": str(c), "frequency": "rcf"[c % 3], "image_count": 1, "instance_count": 1,
                   "synset": str(c)} for c in cats]
    return {"images": images, "annotations": anns, "categories": categories}, dets


def main() -> None:
    if len(sys.argv) > 1:
        sys.path.insert(0, sys.argv[1])
    np.float = float  # the lvis package still uses it
    vis = types.ModuleType("lvis.vis")
    vis.LVISVis = object
    sys.modules["lvis.vis"] = vis
    from lvis.eval import LVISEval
    from lvis.lvis import LVIS
    from lvis.results import LVISResults

    from glipcli.bench.lvis_eval import METRIC_NAMES, lvis_box_ap

    logging.disable(logging.CRITICAL)
    worst = 0.0
    for seed in range(6):
        gt, dets = random_case(seed)
        ours = lvis_box_ap(copy.deepcopy(gt), copy.deepcopy(dets)).metrics
        with contextlib.redirect_stdout(io.StringIO()):
            lvis_gt = LVIS.__new__(LVIS)
            lvis_gt.logger = logging.getLogger("lvis")
            lvis_gt.dataset = copy.deepcopy(gt)
            lvis_gt._create_index()
            evaluator = LVISEval(lvis_gt, LVISResults(lvis_gt, copy.deepcopy(dets), max_dets=-1), iou_type="bbox")
            evaluator.params.max_dets = -1
            evaluator.run()
        theirs = evaluator.get_results()
        diff = max(abs(ours[k] - theirs[k]) for k in METRIC_NAMES)
        worst = max(worst, diff)
        print(f"case {seed}: AP {ours['AP']:.4f} (official {theirs['AP']:.4f}), largest difference {diff:.2e}")
    print(f"largest difference over all metrics and cases: {worst:.2e}")


if __name__ == "__main__":
    main()
