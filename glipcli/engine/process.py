"""Process-level pieces shared by the training loops: the accelerate state and Ctrl-C handling."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

from glipcli.errors import GlipError


def make_accelerator(mixed_precision: str, cpu: bool):
    """An Accelerator for this run. accelerate keeps one process-wide state; a run in the same
    process with another precision (or device choice) starts it afresh (the process group, if
    any, is kept)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state:
        state = AcceleratorState()
        if str(state.mixed_precision) != mixed_precision or (cpu and state.device.type != "cpu"):
            AcceleratorState._reset_state()
    try:
        return Accelerator(mixed_precision=mixed_precision, cpu=cpu)
    except (ValueError, RuntimeError) as exc:
        raise GlipError(f"--mixed-precision {mixed_precision}: {str(exc).splitlines()[0]}") from None


class GracefulInterrupt:
    """First Ctrl-C: set `stop_requested` (the loop finishes its step, saves a checkpoint and
    stops). Second: stop at once. Only in the main thread of a single-process run."""

    def __init__(self, say: Callable[[str], None]):
        self.say = say
        self.stop_requested = False
        self._previous = None

    def install(self, num_processes: int) -> None:
        if threading.current_thread() is not threading.main_thread() or num_processes > 1:
            return
        self._previous = signal.getsignal(signal.SIGINT)
        previous = self._previous

        def handler(signum, frame):
            if self.stop_requested:
                signal.signal(signal.SIGINT, previous)
                raise KeyboardInterrupt
            self.stop_requested = True
            self.say("stopping after this step to save a checkpoint (Ctrl-C again to stop at once)")

        signal.signal(signal.SIGINT, handler)

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
