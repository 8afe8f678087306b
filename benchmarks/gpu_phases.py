"""Where GLIP-T's batch-1 time goes on a GPU: preprocessing, backbone, head, post-processing.

Each phase is timed alone with the device synchronised around it (median of --runs after a
warm-up), eager and, with --cuda-graphs, replayed from CUDA graphs; then one eager call runs under
the torch profiler and its busiest operators by CPU and by device time are printed. A phase's
time minus its device time is what the host spends launching kernels and waiting on itself.

    python benchmarks/gpu_phases.py                        # GLIP-T, 6 classes, float32
    python benchmarks/gpu_phases.py --dtype bfloat16 --cuda-graphs
    python benchmarks/gpu_phases.py --device cpu --preset nano --runs 1   # a dry run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHORT_CLASSES, machine_description, test_image  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="glip-t")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--cuda-graphs", action="store_true")
    parser.add_argument("--top", type=int, default=12, help="operators listed per table")
    args = parser.parse_args()

    import torch

    from glipcli.config import get_preset
    from glipcli.data.batching import iter_batches
    from glipcli.data.transforms import batch_images
    from glipcli.modeling.glip import GLIP
    from glipcli.predictor import GLIPPredictor

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def median_time(fn) -> float:
        fn()
        sync()
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    print(f"machine: {machine_description()}; {args.preset} {args.dtype}, 6 classes, batch 1, "
          f"median of {args.runs}", flush=True)
    torch.manual_seed(0)
    model = GLIP(get_preset(args.preset))
    ways = {"eager": GLIPPredictor(model, device=args.device, dtype=args.dtype)}
    if args.cuda_graphs:
        import copy

        ways["graphs"] = GLIPPredictor(copy.deepcopy(model), device=args.device, dtype=args.dtype, cuda_graphs=True)
    image = test_image()
    for name, predictor in ways.items():
        encoded = predictor.encode_classes(SHORT_CLASSES)
        def prepare():
            item = next(iter(iter_batches([image], predictor.cfg.input, 1)))
            return batch_images([p.tensor for p in item], predictor.cfg.input.size_divisible)

        batch, sizes = prepare()

        def to_device():
            return batch.to(predictor.device, predictor.dtype if predictor.cast_weights else None)

        images = to_device()

        def backbone():
            if predictor.graphs is not None:
                return predictor.graphs.backbone(images)
            with torch.inference_mode(), predictor._autocast():
                return predictor.model.backbone(images)

        def detect():
            return predictor.detect_tensor(batch, sizes, encoded)

        def whole():
            with torch.inference_mode():
                predictor.predict([image], SHORT_CLASSES)

        rows = {"prepare (CPU: decode, resize, normalise, pad)": median_time(prepare),
                "copy to device": median_time(to_device),
                "backbone": median_time(backbone),
                "detect_tensor (backbone + head + post-processing)": median_time(detect),
                "predict (everything)": median_time(whole)}
        print(f"\n{name}:")
        for label, seconds in rows.items():
            print(f"  {label:52s} {seconds * 1000:8.1f} ms", flush=True)
        with torch.inference_mode():
            dets = predictor.detect_tensor(batch, sizes, encoded)
        print(f"  detections kept: {len(dets[0])}")

    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    predictor = ways["eager"]
    with profile(activities=activities) as prof:
        with torch.inference_mode():
            predictor.predict([image], SHORT_CLASSES)
        sync()
    print("\neager, by CPU time:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=48))
    if args.device.startswith("cuda"):
        print("eager, by device time:")
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=args.top,
                                        max_name_column_width=48))
        events = prof.key_averages()
        device_total = sum(e.self_device_time_total for e in events) / 1e3
        launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cudaLaunchKernelExC"))
        print(f"device busy {device_total:.1f} ms in total; kernel launches: {launches}")


if __name__ == "__main__":
    main()
