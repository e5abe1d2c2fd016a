"""Do subnormal floats slow a deep sigmoid MLP down? Two measurements, in one process, interleaved, medians:
1. the CPU's own penalty: elementwise float32 work on subnormal inputs against normal inputs, with
   torch.set_flush_denormal off and on (x86 FTZ/DAZ: subnormals read and written as 0);
2. gradexp's loop: `model.depth=DEPTH activation=sigmoid` (its first layers' gradients are ~1e-34, their entries
   largely subnormal) against `activation=relu`, each with flushing off and on, one torch thread.
If (1) shows no penalty, (2) cannot either: the sigmoid/relu gap, if any, has another cause.

    python scripts/bench_subnormals.py [--depth 40] [--steps 300] [--repeats 3]"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import torch


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def kernel_ms(x: torch.Tensor, reps: int = 50) -> float:
    """One sigmoid-backward-like elementwise chain, g * s * (1 - s), in milliseconds."""
    def work():
        return x * x * (1 - x)
    work()
    started = time.perf_counter()
    for _ in range(reps):
        work()
    return (time.perf_counter() - started) / reps * 1e3


def run_steps_per_s(overrides: list[str]) -> float:
    import gradexp
    from rich.console import Console
    from gradexp.training.run import run_experiment

    cfg = gradexp.compose(overrides)
    with tempfile.TemporaryDirectory() as tmp:
        outcome = run_experiment(cfg, run_dir=os.path.join(tmp, "run"), overrides=overrides,
                                 console=Console(quiet=True))
    return outcome.perf["steps_per_s"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=40)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    previous = torch.get_flush_denormal() if hasattr(torch, "get_flush_denormal") else False
    n = 1 << 20
    inputs = {"normal": torch.full((n,), 0.5), "subnormal": torch.full((n,), 1e-39)}
    kernels: dict[tuple, list[float]] = {}
    runs: dict[tuple, list[float]] = {}
    base = [f"model.depth={args.depth}", f"train.steps={args.steps}", "train.threads=1", "device=cpu"]
    try:
        for _ in range(args.repeats):
            for flush in (False, True):
                torch.set_flush_denormal(flush)
                for kind, x in inputs.items():
                    kernels.setdefault((kind, flush), []).append(kernel_ms(x))
                for activation in ("sigmoid", "relu"):
                    runs.setdefault((activation, flush), []).append(run_steps_per_s([*base, f"activation={activation}"]))
    finally:
        torch.set_flush_denormal(previous)
    print(f"CPU: {cpu_name()}; {args.repeats} interleaved repeats, medians, 1 torch thread")
    print("elementwise g*s*(1-s) on 1M float32, ms:")
    for (kind, flush), times in kernels.items():
        print(f"  {kind:9s} flush_denormal={flush!s:5s}: {statistics.median(times):.3f}")
    print(f"gradexp run model.depth={args.depth} train.steps={args.steps}, steps/s:")
    for (activation, flush), rates in runs.items():
        print(f"  activation={activation:7s} flush_denormal={flush!s:5s}: {statistics.median(rates):.1f} "
              f"({', '.join(f'{r:.1f}' for r in rates)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
