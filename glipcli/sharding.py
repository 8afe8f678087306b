"""Spreading an image list over the processes of an `accelerate launch` (or `torchrun`) run.

    accelerate launch --num_processes 4 -m glipcli.cli.main label photos/ --prompt-file o.yaml --output ds/

A plain run is one process and none of this costs anything. Under a launcher (`WORLD_SIZE` > 1)
accelerate's `PartialState` joins the process group (NCCL on GPUs, gloo on CPUs); each process
takes its shard of the images, and the main process gathers the results and writes the outputs.

Shards are whole *windows* of `batch_size * WINDOW_BATCHES` consecutive images, dealt out round
robin: image loading groups a window's images by size before batching, so every process forms
exactly the batches a single process would, and the merged output is the single-process output.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from glipcli.data.batching import WINDOW_BATCHES

T = TypeVar("T")


@dataclass(frozen=True)
class Workers:
    """This process's place in the run: `rank` of `num_processes` (`local_rank` on its machine)."""

    rank: int = 0
    num_processes: int = 1
    local_rank: int = 0

    @classmethod
    def current(cls, device: str = "auto") -> "Workers":
        """The launcher's process group, joined on first use (gloo when `device` is the CPU or
        there is no GPU, else NCCL); a single process outside one."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        # Imported here: accelerate takes about a second to import, which a plain run never needs.
        from accelerate import PartialState

        state = PartialState(cpu=device.strip().lower() == "cpu" or not torch.cuda.is_available())
        return cls(rank=state.process_index, num_processes=state.num_processes,
                   local_rank=state.local_process_index)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.num_processes > 1

    def shard(self, items: Sequence[T], batch_size: int = 1) -> list[int]:
        """Indices into `items` this process handles: windows of `batch_size * WINDOW_BATCHES`
        items, window k to process k mod num_processes, in order."""
        window = max(1, batch_size) * WINDOW_BATCHES
        return [i for i in range(len(items)) if (i // window) % self.num_processes == self.rank]

    def device(self, requested: str) -> str:
        """The device for `--device requested` in this process: with several processes on a
        machine with GPUs, `auto`/`cuda` mean this process's own GPU (`cuda:LOCAL_RANK`)."""
        if not self.distributed or requested.strip().lower() not in ("auto", "cuda"):
            return requested
        if not torch.cuda.is_available():
            return requested
        return f"cuda:{self.local_rank % torch.cuda.device_count()}"

    def gather(self, value: Any) -> list[Any] | None:
        """Every process's `value`, by rank, on the main process (None elsewhere)."""
        if not self.distributed:
            return [value]
        gathered: list[Any] | None = [None] * self.num_processes if self.is_main else None
        dist.gather_object(value, gathered, dst=0)
        return gathered

    def broadcast(self, value: Any) -> Any:
        """The main process's `value`, on every process."""
        if not self.distributed:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def wait(self) -> None:
        """Block until every process reaches this point."""
        if self.distributed:
            dist.barrier()


def merge_shards(parts: Sequence[Sequence[tuple[int, T]]]) -> list[tuple[int, T]]:
    """(global index, item) pairs from every shard, in global index order."""
    return sorted((pair for part in parts for pair in part), key=lambda pair: pair[0])
