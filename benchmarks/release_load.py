"""Loading a released GLIP-T file: time and peak memory against the size of its fp32 weights.

The released `.pth` files (`glip_tiny_model_o365_goldg_cc_sbu.pth`, 3.71 GB) are training
checkpoints: `model` + `model_ema` + the optimizer's two Adam moments per parameter, about 4x the
weights. This script fabricates such a file at full size from the official key list
(`../shared/golden/glip_t_keys.json`: 231.8M values, 0.93 GB in fp32; plus BERT pooler and small MLM head
entries, as releases may carry), 3.7 GB as the real file, then loads it, each case in a fresh process with the file dropped from
the page cache first (a cold read, as after a download):

- glip: `load_model` (what `glip detect --weights FILE` does), then every weight read once (as the
  first forward pass reads them);
- baseline: a plain `torch.load(FILE, weights_only=True)` that reads the whole file.

Goal: glip's peak RSS <= fp32 weights + 0.5 GiB. "RSS before" is the process after `import torch` and
the package, before the file is opened. Needs ~4 GB free in the temporary folder and
~4 GB of memory while fabricating.

    python benchmarks/release_load.py [--keys ../shared/golden/glip_t_keys.json] [--tmp /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description, run_worker  # noqa: E402

GIB = 1024**3
REPO = Path(__file__).resolve().parents[1]
DEFAULT_KEYS = REPO.parent / "shared" / "golden" / "glip_t_keys.json"
HIDDEN, VOCAB = 768, 30522


def rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024**2
    return float("nan")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def fabricate(keys: Path, path: Path) -> dict:
    """Write a release-layout checkpoint: DDP-prefixed `model` (plus pooler and MLM head entries)
    and `model_ema`, an Adam optimizer state, scheduler and iteration."""
    import torch

    from glipcli.modeling.anchors import cell_anchor

    entries = json.loads(keys.read_text())["entries"]
    g = torch.Generator().manual_seed(0)
    model = {}
    for e in entries:
        dtype = getattr(torch, e["dtype"])
        if e["model_key"].startswith("rpn.anchor_generator.cell_anchors."):
            level = int(e["model_key"].rsplit(".", 1)[1])
            model[e["key"]] = cell_anchor(64 * 2**level, 8 * 2**level).reshape(1, 4)
        elif dtype.is_floating_point:
            model[e["key"]] = torch.randn(e["shape"], generator=g) * 0.02
        else:
            model[e["key"]] = torch.zeros(e["shape"], dtype=dtype)
    weights_bytes = sum(v.numel() * v.element_size() for v in model.values())
    pooler, mlm = "module.language_backbone.body.model.pooler.dense.", "module.rpn.head.mlm_head.predictions."
    model.update({pooler + "weight": torch.randn(HIDDEN, HIDDEN, generator=g), pooler + "bias": torch.zeros(HIDDEN),
                  mlm + "bias": torch.zeros(VOCAB), mlm + "transform.dense.weight": torch.randn(HIDDEN, HIDDEN, generator=g),
                  mlm + "transform.dense.bias": torch.zeros(HIDDEN), mlm + "transform.LayerNorm.weight": torch.ones(HIDDEN),
                  mlm + "transform.LayerNorm.bias": torch.zeros(HIDDEN)})
    params = [k for k, v in model.items() if v.is_floating_point() and "cell_anchors" not in k]
    ema = {k: v + 1e-4 if k in params else v.clone() for k, v in model.items()}
    state = {i: {"step": torch.tensor(90000.0), "exp_avg": torch.full_like(model[k], 1e-4),
                 "exp_avg_sq": torch.full_like(model[k], 1e-8)} for i, k in enumerate(params)}
    optimizer = {"state": state, "param_groups": [{"lr": 1e-4, "weight_decay": 0.05, "params": list(range(len(params)))}]}
    torch.save({"model": model, "model_ema": ema, "optimizer": optimizer,
                "scheduler": {"last_epoch": 90000, "milestones": {67500: 1, 80000: 1}}, "iteration": 90000}, path)
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    return {"file_bytes": path.stat().st_size, "weights_bytes": weights_bytes, "model_entries": len(model)}


def drop_from_page_cache(path: Path) -> None:
    """Evict the (clean, fsync'ed) file's pages so the load reads from disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def worker(case: str, path: Path) -> dict:
    import logging

    import torch

    from glipcli.config import get_preset
    from glipcli.weights import ModelSource, load_model

    logging.disable(logging.WARNING)  # the one "ignored N entries" line
    torch.set_num_threads(1)
    get_preset("glip-t")
    before = rss_gib()
    start = time.perf_counter()
    if case == "glip":
        model = load_model(ModelSource(get_preset("glip-t"), path))
        loaded = time.perf_counter() - start
        total = 0.0
        for tensor in model.state_dict().values():  # summed in place: no temporary copy
            total += float(tensor.sum()) if tensor.is_floating_point() else 0.0
        tensors = len(model.state_dict())
    else:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
        loaded = time.perf_counter() - start
        tensors = len(obj["model"])
    read = time.perf_counter() - start
    return {"case": case, "load_s": round(loaded, 2), "load_and_read_s": round(read, 2),
            "rss_before_gib": round(before, 3), "rss_after_gib": round(rss_gib(), 3),
            "peak_rss_gib": round(peak_rss_gib(), 3), "tensors": tensors}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2], Path(sys.argv[3]))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=Path, default=DEFAULT_KEYS)
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    if not args.keys.is_file():
        sys.exit(f"{args.keys}: the GLIP-T key list is needed (../shared/golden/glip_t_keys.json)")
    if shutil.disk_usage(args.tmp).free < 5 * 10**9:
        sys.exit(f"{args.tmp}: needs ~5 GB free for the fabricated file")
    folder = Path(tempfile.mkdtemp(prefix="glip-release-", dir=args.tmp))
    try:
        path = folder / "glip_tiny_model_release_layout.pth"
        start = time.perf_counter()
        facts = run_worker(Path(__file__), ["fabricate", str(args.keys), str(path)])
        print(f"fabricated {path.name}: {facts['file_bytes'] / 1e9:.2f} GB "
              f"(fp32 weights {facts['weights_bytes'] / 1e9:.3f} GB = {facts['weights_bytes'] / GIB:.3f} GiB) "
              f"in {time.perf_counter() - start:.0f} s")
        results = {}
        for case in ("glip", "baseline"):
            drop_from_page_cache(path)
            results[case] = run_worker(Path(__file__), [case, str(path)])
        weights_gib = facts["weights_bytes"] / GIB
        print(f"machine: {machine_description()}")
        print(f"{'case':<10}{'load s':>8}{'+read s':>9}{'RSS before':>12}{'peak RSS':>10}{'peak-before':>13}  (GiB)")
        for case, r in results.items():
            print(f"{case:<10}{r['load_s']:>8.2f}{r['load_and_read_s']:>9.2f}{r['rss_before_gib']:>12.3f}"
                  f"{r['peak_rss_gib']:>10.3f}{r['peak_rss_gib'] - r['rss_before_gib']:>13.3f}")
        glip, base = results["glip"], results["baseline"]
        goal = weights_gib + 0.5
        added = glip["peak_rss_gib"] - glip["rss_before_gib"]
        print(f"glip peak RSS {glip['peak_rss_gib']:.3f} GiB = weights + {glip['peak_rss_gib'] - weights_gib:.3f} GiB "
              f"(goal weights + 0.5 = {goal:.3f} GiB: {'met' if glip['peak_rss_gib'] <= goal else 'NOT met'}); "
              f"added by loading {added:.3f} GiB = {added / weights_gib:.2f} x weights; "
              f"load + read time {glip['load_and_read_s'] / base['load_and_read_s']:.2f} x and peak RSS "
              f"{glip['peak_rss_gib'] / base['peak_rss_gib']:.2f} x the plain torch.load baseline")
        print(json.dumps({"facts": facts, "results": results, "goal_gib": round(goal, 3)}))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker" and sys.argv[2] == "fabricate":
        print(json.dumps(fabricate(Path(sys.argv[3]), Path(sys.argv[4]))))
    else:
        main()
