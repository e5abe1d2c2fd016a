"""`train.flush_denormal`: subnormal floats read and written as 0 for the run (torch.set_flush_denormal), an explicit
option and off by default.

On CPUs that take a slow path for subnormal arithmetic (many Intel cores) a deep sigmoid net, whose first layers get
gradients far below float32's smallest normal (1.2e-38), trains slower: on the Xeon of this project's 2026-12-01
machine, `model.depth=40 activation=sigmoid` ran 163 steps/s, 207 flushing (`python scripts/bench_subnormals.py`).
Flushing changes the measurements, not only the speed: every value below 1.2e-38 becomes 0 in the forward pass, in
backward and in the probes, so the gradient norms this tool keeps exact down to the smallest subnormal read 0 there,
a vanishing gradient looks like a dead one, and amp/underflow counts no subnormals. summary.json records the setting
(perf.flush_denormal) beside the numbers it shaped. The flag is the calling thread's (x86's MXCSR): it covers the
training thread, which runs every step with one torch thread; torch's other compute threads may keep subnormals."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def flushing(enabled: bool) -> Iterator[bool]:
    """Subnormals flushed to 0 inside the `with` where `enabled` (and the CPU supports it); as before after it, so
    that the next run of a process (a sweep's basic launcher, a test) starts unflushed. Yields whether it flushes."""
    if not enabled:
        yield False
        return
    supported = torch.set_flush_denormal(True)
    try:
        yield supported
    finally:
        torch.set_flush_denormal(False)
