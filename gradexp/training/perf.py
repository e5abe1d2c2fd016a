"""summary.json `perf`: steps/s and the share of wall time spent in instrumentation.

Instrumentation time = the logging blocks (host transfer, sinks, non-finite check and snapshot) plus,
for each logging step, how much longer it took than a typical (median) non-logging step: the hooks and
probe work inside the step. perf_counter only, no device sync, so on CUDA the figure is an estimate
(a logging step also waits for queued work); scripts/bench_overhead.py is the controlled measurement."""
from __future__ import annotations

import statistics
import time
from collections import deque

PLAIN_WINDOW = 1000  # recent non-logging step times kept for the median


class PerfMeter:
    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.plain: deque[float] = deque(maxlen=PLAIN_WINDOW)
        self.logged: list[float] = []
        self.blocks = 0.0

    # plain calls, not context managers: a generator-based `with` costs microseconds, a share of a small model's step
    def step(self, logging: bool, seconds: float) -> None:
        (self.logged if logging else self.plain).append(seconds)

    def instrumenting(self, seconds: float) -> None:
        self.blocks += seconds

    def summary(self, steps_done: int) -> dict[str, float]:
        elapsed = time.perf_counter() - self.started
        typical = statistics.median(self.plain) if self.plain else min(self.logged, default=0.0)
        inside = sum(max(0.0, t - typical) for t in self.logged)
        return {
            "steps_per_s": steps_done / elapsed if elapsed > 0 else 0.0,
            "wall_s": elapsed,
            "instrumentation_share": (inside + self.blocks) / elapsed if elapsed > 0 else 0.0,
        }
