"""Evaluators on small fixtures in the COCO, LVIS v1 and Flickr30K Entities formats, with hand-checked
metrics. AP at the 101 recall points: a category found at recall r with precision 1 scores
(floor(100 r) + 1) / 101; a box shifted to IoU 2/3 counts at the 4 thresholds 0.50..0.65 of 10."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from glipcli.evaluation.coco import coco_box_ap
from glipcli.evaluation.flickr import FlickrGroundTruth, FlickrPrediction, flickr_recall, parse_sentence
from glipcli.evaluation.lvis import LvisGroundTruth, lvis_box_ap
from glipcli.errors import GlipError

SHIFTED_AP = 0.4  # IoU 2/3: matched at 0.50, 0.55, 0.60, 0.65


def shifted(box, dx):
    x, y, w, h = box
    return [x + dx, y, w, h]


# -- COCO ------------------------------------------------------------------------------------------------
def coco_gt():
    """3 images, 2 categories (+ one never annotated); boxes large (100x100) and small (20x20)."""
    return {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 400, "height": 400} for i in (1, 2, 3)],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "unused"}],
        "annotations": [  # no iscrowd / area keys (Roboflow-like): filled in
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 100, 100]},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [50, 50, 100, 100]},
            {"id": 3, "image_id": 3, "category_id": 2, "bbox": [200, 200, 100, 100]},
        ],
    }


def perfect(gt):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 0.9}
            for a in gt["annotations"]]


def test_coco_perfect_predictions(tmp_path):
    gt = coco_gt()
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        m = coco_box_ap(path, perfect(gt))
    assert out.getvalue() == ""  # pycocotools' prints are swallowed
    assert m.ap == pytest.approx(1.0) and m.ap50 == pytest.approx(1.0)
    assert m.metrics["APs"] == -1.0 and m.metrics["APl"] == pytest.approx(1.0)
    assert m.per_category == {1: pytest.approx(1.0), 2: pytest.approx(1.0), 3: -1.0}
    assert (m.num_images, m.num_detections) == (3, 3)


def test_coco_shifted_box():
    gt = coco_gt()
    dets = perfect(gt)
    dets[2]["bbox"] = shifted(dets[2]["bbox"], 20)  # dog: IoU 8000/12000 = 2/3
    m = coco_box_ap(gt, dets)
    assert m.per_category[1] == pytest.approx(1.0)
    assert m.per_category[2] == pytest.approx(SHIFTED_AP)
    assert m.ap == pytest.approx((1.0 + SHIFTED_AP) / 2)
    assert m.ap50 == pytest.approx(1.0) and m.metrics["AP75"] == pytest.approx(0.5)
    dets[2]["bbox"] = shifted(gt["annotations"][2]["bbox"], 40)  # IoU 6000/14000 < 0.5: a miss
    assert coco_box_ap(gt, dets).per_category[2] == pytest.approx(0.0)


def test_coco_half_recall_and_ranked_false_positive():
    gt = coco_gt()
    dets = [d for d in perfect(gt) if d["image_id"] != 2]  # cat found in 1 of 2 images
    m = coco_box_ap(gt, dets)
    assert m.per_category[1] == pytest.approx(51 / 101)
    # a false positive ranked above the true one: precision 1/2 at every recall
    fp = {"image_id": 3, "category_id": 2, "bbox": [0, 0, 30, 30], "score": 0.95}
    m = coco_box_ap(gt, perfect(gt) + [fp])
    assert m.per_category[2] == pytest.approx(0.5) and m.per_category[1] == pytest.approx(1.0)


def test_coco_empty_predictions_and_subsets():
    gt = coco_gt()
    m = coco_box_ap(gt, [])
    assert m.ap == 0.0 and m.ap50 == 0.0 and m.metrics["APs"] == -1.0 and m.num_detections == 0
    assert m.per_category == {1: 0.0, 2: 0.0, 3: -1.0}
    m = coco_box_ap(gt, perfect(gt), image_ids=[1, 2])  # only the cat images
    assert m.ap == pytest.approx(1.0) and m.per_category[2] == -1.0 and m.num_detections == 2


def test_coco_bad_input(tmp_path):
    gt = coco_gt()
    with pytest.raises(GlipError, match="image_id 9 is not an image of the ground truth"):
        coco_box_ap(gt, [{"image_id": 9, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}])
    with pytest.raises(GlipError, match=r"detections\[0\]: needs image_id"):
        coco_box_ap(gt, [{"image_id": 1, "bbox": [0, 0, 1, 1], "score": 1}])
    with pytest.raises(GlipError, match="4 finite numbers"):
        coco_box_ap(gt, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1], "score": 1}])
    with pytest.raises(GlipError, match="no such COCO annotation file"):
        coco_box_ap(tmp_path / "none.json", [])
    with pytest.raises(GlipError, match="not a COCO ground truth"):
        coco_box_ap({"images": []}, [])


# -- LVIS ------------------------------------------------------------------------------------------------
def lvis_gt():
    """Categories 1 (rare), 2 (common), 3 (frequent); 3 images.
    image 1: cat 1 box, cat 2 negative, cat 3 unknown; image 2: cat 2 box, cat 3 box (not exhaustive),
    cat 1 negative; image 3: cat 3 box, cats 1 and 2 negative."""
    box = lambda i, img, cat, b: {"id": i, "image_id": img, "category_id": cat, "bbox": b,  # noqa: E731
                                  "area": b[2] * b[3]}
    return {
        "images": [
            {"id": 1, "neg_category_ids": [2], "not_exhaustive_category_ids": []},
            {"id": 2, "neg_category_ids": [1], "not_exhaustive_category_ids": [3]},
            {"id": 3, "neg_category_ids": [1, 2], "not_exhaustive_category_ids": []},
        ],
        "categories": [{"id": 1, "name": "a", "frequency": "r"}, {"id": 2, "name": "b", "frequency": "c"},
                       {"id": 3, "name": "c", "frequency": "f"}],
        "annotations": [box(1, 1, 1, [10, 10, 100, 100]), box(2, 2, 2, [10, 10, 100, 100]),
                        box(3, 2, 3, [200, 200, 100, 100]), box(4, 3, 3, [50, 50, 100, 100])],
    }


def test_lvis_perfect_and_frequency_buckets():
    gt = lvis_gt()
    m = lvis_box_ap(gt, perfect(gt))
    for name in ("AP", "AP50", "APr", "APc", "APf", "APl"):
        assert m.metrics[name] == pytest.approx(1.0), name
    assert m.metrics["APs"] == -1.0
    dets = perfect(gt)
    dets[1]["bbox"] = shifted(dets[1]["bbox"], 20)  # common: IoU 2/3
    dets = [d for d in dets if d["image_id"] != 3]  # frequent: 1 of 2 found
    m = lvis_box_ap(gt, dets)
    assert m.metrics["APr"] == pytest.approx(1.0)
    assert m.metrics["APc"] == pytest.approx(SHIFTED_AP)
    assert m.metrics["APf"] == pytest.approx(51 / 101)
    assert m.metrics["AP"] == pytest.approx((1.0 + SHIFTED_AP + 51 / 101) / 3)
    assert m.per_category == {1: pytest.approx(1.0), 2: pytest.approx(SHIFTED_AP), 3: pytest.approx(51 / 101)}


def test_lvis_unverified_categories_are_not_penalised():
    gt = lvis_gt()
    fp = {"image_id": 1, "category_id": 3, "bbox": [300, 300, 50, 50], "score": 0.99}
    # cat 3 is neither annotated nor negative in image 1: the detection is dropped
    assert lvis_box_ap(gt, perfect(gt) + [fp]).metrics["APf"] == pytest.approx(1.0)
    # in image 3 cat 2 is negative: a detection of it is a false positive, ranked first
    fp = {"image_id": 3, "category_id": 2, "bbox": [300, 300, 50, 50], "score": 0.99}
    assert lvis_box_ap(gt, perfect(gt) + [fp]).metrics["APc"] == pytest.approx(0.5)


def test_lvis_not_exhaustive_categories():
    gt = lvis_gt()
    extra = {"image_id": 2, "category_id": 3, "bbox": [0, 300, 50, 50], "score": 0.99}
    # image 2's cat 3 is not exhaustively annotated: an unmatched cat-3 detection there is ignored
    assert lvis_box_ap(gt, perfect(gt) + [extra]).metrics["APf"] == pytest.approx(1.0)
    gt["images"][1]["not_exhaustive_category_ids"] = []
    # exhaustive: a false positive ranked first; precision 1/2 at recall 1/2 and 2/3 at recall 1, so
    # 2/3 at every recall point once made monotone
    assert lvis_box_ap(gt, perfect(gt) + [extra]).metrics["APf"] == pytest.approx(2 / 3)


def _grid_gt(n):
    boxes = [[20.0 * (i % 20), 20.0 * (i // 20), 10.0, 10.0] for i in range(n)]
    gt = {"images": [{"id": 1, "neg_category_ids": [], "not_exhaustive_category_ids": []}],
          "categories": [{"id": 1, "name": "dot", "frequency": "f"}],
          "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": 100.0}
                          for i, b in enumerate(boxes)]}
    dets = [{"image_id": 1, "category_id": 1, "bbox": b, "score": 1.0 - i / 1000} for i, b in enumerate(boxes)]
    return gt, dets


def test_lvis_fixed_ap_budget_is_per_category_not_per_image():
    gt, dets = _grid_gt(301)
    assert lvis_box_ap(gt, dets).ap == pytest.approx(1.0)  # no per-image limit
    # the standard LVIS budget (300 per image) loses one box: recall 300/301 reaches only 0.99
    assert lvis_box_ap(gt, dets, max_dets_per_category=None, max_dets_per_image=300).ap == pytest.approx(100 / 101)
    # the fixed-AP budget counts per category over the data set
    assert lvis_box_ap(gt, dets, max_dets_per_category=150).ap == pytest.approx(50 / 101)


def test_lvis_equals_cocoeval_when_everything_is_verified():
    """Exhaustive annotation + every absent category negative: LVIS AP == pycocotools AP (no image cap)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(0)
    images, anns, dets = [], [], []
    cats = [1, 2, 3, 4]
    for img in range(1, 16):
        present = set()
        for _ in range(rng.integers(0, 6)):
            cat = int(rng.choice(cats))
            w, h = (float(v) for v in rng.choice([8, 20, 40, 80, 150], size=2))
            x, y = (float(v) for v in rng.uniform(0, 300, size=2))
            anns.append({"id": len(anns) + 1, "image_id": img, "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
            present.add(cat)
            for _ in range(rng.integers(0, 3)):  # jittered detections, some good, some poor
                j = rng.normal(0, 0.1, size=2) * [w, h]
                dets.append({"image_id": img, "category_id": cat, "bbox": [x + j[0], y + j[1], w, h],
                             "score": float(rng.uniform())})
        for _ in range(rng.integers(0, 4)):  # false positives of any category
            dets.append({"image_id": img, "category_id": int(rng.choice(cats)),
                         "bbox": [*(float(v) for v in rng.uniform(0, 300, 2)), 30.0, 30.0],
                         "score": float(rng.uniform())})
        images.append({"id": img, "width": 500, "height": 500,
                       "neg_category_ids": [c for c in cats if c not in present], "not_exhaustive_category_ids": []})
    categories = [{"id": c, "name": str(c), "frequency": "rcff"[c - 1]} for c in cats]
    lvis = lvis_box_ap({"images": images, "annotations": anns, "categories": categories}, dets)

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": images, "annotations": anns, "categories": categories}
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes([dict(d) for d in dets]), "bbox")
        ev.params.maxDets = [1, 10, 100]  # summarize() reads the 100 entry; no image has more
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    for i, name in enumerate(("AP", "AP50", "AP75", "APs", "APm", "APl")):
        assert lvis.metrics[name] == pytest.approx(ev.stats[i], abs=1e-12), name
    assert 0.1 < lvis.ap < 0.9  # a non-trivial case


def test_lvis_ground_truth_checks(tmp_path):
    gt = lvis_gt()
    del gt["images"][0]["neg_category_ids"]
    with pytest.raises(GlipError, match="not LVIS v1 format: missing key 'neg_category_ids'"):
        LvisGroundTruth.load(gt)
    gt = lvis_gt()
    gt["categories"][0]["frequency"] = "x"
    with pytest.raises(GlipError, match="frequency must be r, c or f"):
        lvis_box_ap(gt, [])
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps(lvis_gt()))
    m = lvis_box_ap(path, [])
    assert m.ap == 0.0 and m.metrics["APs"] == -1.0


# -- Flickr30K Entities ----------------------------------------------------------------------------------
SENTENCES = {
    "100": [
        "[/EN#1/people A man] in [/EN#2/clothing a red shirt] holds [/EN#3/other two cups] .",
        "[/EN#1/people Someone] stands in [/EN#9/scene a kitchen] .",
        "",
        "[/EN#7/other Nothing] is boxed here .",
    ],
    "200": ["[/EN#5/animals A dog] and [/EN#6/people/other its owner] ."],
}
# image 100: man (1 box), shirt (1 box), two cups (2 boxes, one shared with phrase 8); 7 has no box
ANNOTATIONS = {
    "100": [(["1"], [10, 10, 110, 110]), (["2"], [20, 40, 100, 100]), (["3"], [200, 200, 300, 300]),
            (["3", "8"], [400, 200, 500, 300]), (["7"], None), (["9"], "scene")],
    "200": [(["5"], [0, 0, 100, 100]), (["6"], [150, 0, 250, 100])],
}


def write_flickr(root: Path) -> Path:
    (root / "Sentences").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "val.txt").write_text("100\n200\n")
    (root / "test.txt").write_text("300\n")
    for img, lines in SENTENCES.items():
        (root / "Sentences" / f"{img}.txt").write_text("\n".join(lines) + "\n")
    for img, objs in ANNOTATIONS.items():
        parts = ["<annotation><size><width>600</width><height>400</height><depth>3</depth></size>"]
        for names, box in objs:
            tags = "".join(f"<name>{n}</name>" for n in names)
            if box is None:
                parts.append(f"<object>{tags}<nobndbox>1</nobndbox><scene>0</scene></object>")
            elif box == "scene":
                parts.append(f"<object>{tags}<nobndbox>0</nobndbox><scene>1</scene></object>")
            else:
                x0, y0, x1, y1 = box
                parts.append(f"<object>{tags}<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
                             f"<ymax>{y1}</ymax></bndbox></object>")
        (root / "Annotations" / f"{img}.xml").write_text("".join(parts) + "</annotation>")
    return root


def test_flickr_parsing(tmp_path):
    s = parse_sentence(SENTENCES["100"][0], "100", 0)
    assert s.caption == "A man in a red shirt holds two cups ."
    assert [(p.phrase_id, p.text, p.types) for p in s.phrases] == [
        ("1", "A man", ("people",)), ("2", "a red shirt", ("clothing",)), ("3", "two cups", ("other",))]
    assert [s.caption[a:b] for a, b in (p.span for p in s.phrases)] == ["A man", "a red shirt", "two cups"]
    gt = FlickrGroundTruth.load(write_flickr(tmp_path / "f30k"), "val")
    # sentence 1 keeps only "Someone" (the scene phrase has no box); sentence 2 (line 4) has no boxed phrase
    assert [(s.image_id, s.sentence_id, len(s.phrases)) for s in gt.sentences] == [("100", 0, 3), ("100", 1, 1),
                                                                                  ("200", 0, 2)]
    assert gt.num_phrases == 6
    assert gt.boxes["100"]["3"].shape == (2, 4) and gt.boxes["100"]["8"].shape == (1, 4)
    assert gt.sentences[2].phrases[1].types == ("people", "other")


def _perfect_flickr(gt):
    return [FlickrPrediction(s.image_id, s.sentence_id, [gt.boxes[s.image_id][p.phrase_id][:1].tolist()
                                                        for p in s.phrases]) for s in gt.sentences]


def test_flickr_perfect_and_ranked(tmp_path):
    gt = FlickrGroundTruth.load(write_flickr(tmp_path / "f30k"), "val")
    m = flickr_recall(gt, _perfect_flickr(gt))
    assert m.recall == {1: 1.0, 5: 1.0, 10: 1.0} and m.upper_bound == 1.0
    assert (m.num_phrases, m.num_sentences) == (6, 3)
    wrong = [500, 350, 550, 390]
    preds = _perfect_flickr(gt)
    # "A man": the right box ranked 3rd; "two cups": the second of its two boxes (any box counts)
    preds[0] = FlickrPrediction("100", 0, [[wrong, wrong, [10, 10, 110, 110]], [[20, 40, 100, 100]],
                                           [[400, 200, 500, 300]]])
    # "its owner": shifted to IoU 2/3 (correct); "A dog": shifted to IoU 0.43 at rank 1, nothing else
    preds[2] = FlickrPrediction("200", 0, [[[40, 0, 140, 100]], [[170, 0, 270, 100]]])
    m = flickr_recall(gt, [p.__dict__ for p in preds])  # plain dicts are accepted too
    assert m.recall == {1: pytest.approx(4 / 6), 5: pytest.approx(5 / 6), 10: pytest.approx(5 / 6)}
    assert m.upper_bound == pytest.approx(5 / 6)
    assert m.per_type["people"] == {1: pytest.approx(2 / 3), 5: 1.0, 10: 1.0}
    assert m.per_type["animals"] == {1: 0.0, 5: 0.0, 10: 0.0}
    assert m.per_type["other"][1] == 1.0  # "two cups" and "its owner"


def test_flickr_merged_boxes_protocol(tmp_path):
    root = write_flickr(tmp_path / "f30k")
    pred = _perfect_flickr(FlickrGroundTruth.load(root, "val"))
    pred[0] = FlickrPrediction("100", 0, [[[10, 10, 110, 110]], [[20, 40, 100, 100]], [[400, 200, 500, 300]]])
    assert flickr_recall(FlickrGroundTruth.load(root, "val"), pred).recall[1] == 1.0
    merged = FlickrGroundTruth.load(root, "val", merge_boxes=True)
    assert merged.boxes["100"]["3"].tolist() == [[200, 200, 500, 300]]
    # one cup against the enclosing box of both: IoU 1/3, a miss
    assert flickr_recall(merged, pred).recall[1] == pytest.approx(5 / 6)


def test_flickr_errors(tmp_path):
    root = write_flickr(tmp_path / "f30k")
    gt = FlickrGroundTruth.load(root, "val")
    preds = _perfect_flickr(gt)
    with pytest.raises(GlipError, match="no prediction for 1 of 3 sentences"):
        flickr_recall(gt, preds[:2])
    with pytest.raises(GlipError, match="a second prediction for sentence 0 of image 100"):
        flickr_recall(gt, preds + preds[:1])
    with pytest.raises(GlipError, match="2 phrase box lists for sentence 0 of image 100, expected 3"):
        flickr_recall(gt, [FlickrPrediction("100", 0, preds[0].boxes[:2]), *preds[1:]])
    with pytest.raises(GlipError, match="image '999' is not in the val split"):
        flickr_recall(gt, [FlickrPrediction("999", 0, [])])
    # a sentence without boxed phrases is ignored; a phrase with no box is a miss
    extra = FlickrPrediction("100", 2, [[[0, 0, 1, 1]]])
    empty = FlickrPrediction("100", 1, [[]])
    assert flickr_recall(gt, [preds[0], empty, preds[2], extra]).recall[1] == pytest.approx(5 / 6)
    with pytest.raises(GlipError, match="no such file"):
        FlickrGroundTruth.load(root, "train")
    with pytest.raises(GlipError, match="no such Flickr30K Entities annotation file"):
        FlickrGroundTruth.load(root, "test")
    with pytest.raises(GlipError, match="unterminated phrase"):
        parse_sentence("[/EN#1/people A man", "1", 0)
