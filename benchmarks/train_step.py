"""One GLIP-T fine-tuning step (forward + loss + backward + AdamW update), batch 2.

    python benchmarks/train_step.py                 # CPU, float32
    python benchmarks/train_step.py --device cuda --dtype bfloat16

Prints the median step time over --runs steps after a warm-up step, and the peak RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHORT_CLASSES, machine_description, measure  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="glip-t")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1333), metavar=("H", "W"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()

    import torch

    from glipcli.config import get_preset
    from glipcli.losses import GLIPLoss, TrainTarget
    from glipcli.modeling.glip import GLIP
    from glipcli.prompts.encoding import encode_class_names

    torch.manual_seed(0)
    cfg = get_preset(args.preset)
    model = GLIP(cfg).to(args.device).train()
    loss_fn = GLIPLoss(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    prompt = encode_class_names(SHORT_CLASSES)
    n = prompt.num_tokens
    ids = prompt.input_ids[:, :n].expand(args.batch_size, -1).to(args.device)
    mask = prompt.attention_mask[:, :n].expand(args.batch_size, -1).to(args.device)
    h, w = (-(-s // 32) * 32 for s in args.size)
    images = torch.randn(args.batch_size, 3, h, w, device=args.device)
    pmap = prompt.positive_map[:, :n]
    targets = [TrainTarget(boxes=torch.tensor([[40.0, 60.0, 300.0, 400.0], [500.0, 100.0, 700.0, 350.0]], device=args.device),
                           positive_map=pmap[[0, 2]].to(args.device)) for _ in range(args.batch_size)]
    autocast = (contextlib.nullcontext() if args.dtype == "float32"
                else torch.autocast(args.device.split(":")[0], dtype=getattr(torch, args.dtype)))

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            text = model.encode_text(ids, mask)
            outputs = model(images, text)
        losses = loss_fn(outputs, targets, mask)
        sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    result = measure(step, runs=args.runs)
    print(f"machine: {machine_description()}; {args.preset} train step, batch {args.batch_size}, "
          f"{h}x{w}, {args.device} {args.dtype}")
    print(f"median step {result['median_s']:.3f} s (runs {', '.join(f'{t:.3f}' for t in result['times_s'])}); "
          f"peak RSS {result['peak_rss_gib']:.2f} GiB"
          + (f", peak GPU memory {result['peak_gpu_gib']:.2f} GiB" if "peak_gpu_gib" in result else ""))


if __name__ == "__main__":
    main()
