"""The histogram probe's packing alone, on the tensors of a real "everything every step" logging step.

Runs a few steps of each configuration of bench_overhead.py with histograms every step, keeps the tensors the
probe packed on the last step (outputs and gradients after backward, weights after the optimizer step), then
times `pack_many` on them: thread CPU time (the machine's other jobs do not count), median of interleaved
repeats, ms per logging step, and the number of top-level aten operators a logging step. To compare two
revisions, run it in a worktree of each (PYTHONPATH=<worktree> for the older one).
Usage:
  python scripts/bench_histograms.py [--only mlp,mlp20] [--repeats 9] [--threads 1]"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

import bench_overhead as bench
from gradexp.probes import histograms


def captured(name: str) -> list[list[torch.Tensor]]:
    """The tensor lists pack_many got on the last of 3 logging steps (one list per phase)."""
    overrides, _ = bench.CONFIGS[name]
    cfg = bench.compose_cfg(overrides + bench.EVERYTHING)
    task = bench.build.task(cfg, bench.build.device(cfg))
    calls, real = [], histograms.pack_many

    def spy(tensors, *args, **kwargs):
        calls.append([t.detach().clone() for t in tensors])
        return real(tensors, *args, **kwargs)

    histograms.pack_many = spy
    try:
        with tempfile.TemporaryDirectory() as tmp:
            bench.time_gradexp(cfg, task, 3, "all", tmp)
    finally:
        histograms.pack_many = real
    return calls[-2:]


def pack_step(phases: list[list[torch.Tensor]], scratch) -> None:
    for tensors in phases:
        histograms.pack_many(tensors, scratch=scratch) if scratch is not None else histograms.pack_many(tensors)


def time_ms(phases, scratch, repeats: int) -> float:
    pack_step(phases, scratch)  # warm-up: buffers, layout constants
    n = max(1, int(0.05 / max(1e-6, _one(phases, scratch))))  # ~50 ms a repeat
    times = []
    for _ in range(repeats):
        t0 = time.thread_time()
        for _ in range(n):
            pack_step(phases, scratch)
        times.append((time.thread_time() - t0) / n * 1e3)
    return statistics.median(times)


def _one(phases, scratch) -> float:
    t0 = time.perf_counter()
    pack_step(phases, scratch)
    return time.perf_counter() - t0


def operators(phases, scratch) -> int:
    with torch.profiler.profile() as prof:
        pack_step(phases, scratch)
    return sum(1 for e in prof.events()
               if e.name.startswith("aten::") and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="mlp,mlp20")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for name in args.only.split(","):
        phases = captured(name)
        scratch = histograms.Scratch() if hasattr(histograms, "Scratch") else None  # older revisions have none
        sizes = [t.numel() for tensors in phases for t in tensors]
        print(f"{name}: {len(sizes)} histograms, {sum(sizes):,} entries a logging step; pack_many "
              f"{time_ms(phases, scratch, args.repeats):.3f} ms a logging step (thread CPU, median of {args.repeats}), "
              f"{operators(phases, scratch)} top-level aten operators")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
