"""Where a logging step's time goes: torch.profiler's table of the top self-CPU entries (operators and Python
functions) over gradexp's loop with the default probes and the TensorBoard + summary sinks, as in
scripts/bench_overhead.py's (b). For a Python-level view run it under py-spy (a tool, not a dependency):
  py-spy record -o profile.svg -- python scripts/profile_logging.py --no-torch-profiler
Usage:
  python scripts/profile_logging.py [--only mlp] [--override log.every=1 ...] [--steps 300] [--top 25]"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])  # scripts/ itself: reuse the benchmark's configurations
import bench_overhead as bench  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="mlp", choices=list(bench.CONFIGS))
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--no-torch-profiler", action="store_true", help="time only (for py-spy)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = bench.compose_cfg(bench.CONFIGS[args.only][0] + args.override)
    task = bench.build.task(cfg, bench.build.device(cfg))
    with tempfile.TemporaryDirectory() as tmp:
        bench.time_gradexp(cfg, task, 20, "default", tempfile.mkdtemp(dir=tmp))  # warm-up
        if args.no_torch_profiler:
            t = bench.time_gradexp(cfg, task, args.steps, "default", tempfile.mkdtemp(dir=tmp))
            print(f"{args.steps} steps in {t:.3f} s")
            return 0
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_stack=False) as prof:
            t0 = time.perf_counter()
            bench.time_gradexp(cfg, task, args.steps, "default", tempfile.mkdtemp(dir=tmp))
            t = time.perf_counter() - t0
    print(f"{args.steps} steps in {t:.3f} s under the profiler")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=48))
    return 0


if __name__ == "__main__":
    sys.exit(main())
