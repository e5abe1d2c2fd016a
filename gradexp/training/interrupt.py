"""Ctrl-C, SIGTERM and SIGUSR2 as a request, not a crash.

SLURM sends SIGTERM before it preempts or cancels a job; submitit has SLURM send SIGUSR2 shortly before the
time limit. Inside `Interrupts()`, the first of these only sets a flag: the training loop finishes the
current step, then the run flushes TensorBoard and writes checkpoint.pt and summary.json (status
`interrupted`). A second signal exits the process at once (os._exit), so the last periodic
checkpoint, written atomically, is what remains; the same signal within SAME_INTERRUPT_S of the first is the
same interrupt delivered twice. The previous handlers come back on exit."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Callable, Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)
# The same signal again within this many seconds is the same interrupt, not a second one: a terminal's Ctrl-C reaches
# every process of its group, and a joblib sweep's parent passes it on to its workers as well, so each worker got it
# twice at once and exited at the "second interrupt" without its summary (found by a new user: a traceback)
SAME_INTERRUPT_S = 0.5


class Interrupts:
    received: Optional[int] = None  # the first signal this process caught: a joblib worker starts no job after it

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._first_at = 0.0  # time.monotonic() of the first signal
        self._previous: dict[int, object] = {}
        # called with each signal caught: `gradexp run` passes it on to a joblib sweep's worker processes, where the
        # jobs run (a scheduler's SIGTERM to the parent alone left them training, orphaned once it exited)
        self.on_signal: Optional[Callable[[int], None]] = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """130 for SIGINT, 143 for SIGTERM, 140 for SIGUSR2: the shell's 128 + signal number."""
        return 128 + (self.signum or signal.SIGINT)

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.on_signal is not None:
            self.on_signal(signum)
        if self.signum == signum and time.monotonic() - self._first_at < SAME_INTERRUPT_S:
            return  # the same Ctrl-C, delivered twice (SAME_INTERRUPT_S)
        if self.signum is not None:
            sys.stderr.write("\ngradexp: second interrupt, exiting now (the last periodic checkpoint is kept)\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        self.signum, self._first_at = signum, time.monotonic()
        Interrupts.received = Interrupts.received or signum
        sys.stderr.write(f"\ngradexp: {signal.Signals(signum).name} received, stopping after this step "
                         "(press Ctrl-C again to exit at once)\n")

    def __enter__(self) -> "Interrupts":
        if threading.current_thread() is threading.main_thread():  # signals can only be caught there
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def hand_over(self) -> None:
        """After the run saved its checkpoint: give a SIGUSR2 to the handler that was there before (submitit's in a
        SLURM job, which requeues the job; the requeued job resumes from the checkpoint). Nothing otherwise."""
        previous = self._previous.get(signal.SIGUSR2)
        if self.signum == signal.SIGUSR2 and callable(previous):
            previous(signal.SIGUSR2, None)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
