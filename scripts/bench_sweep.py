"""Wall time of one 8-job sweep run by Hydra's basic launcher (one job after another) and by
`hydra/launcher=joblib` (jobs in parallel, torch threads divided among them); prints both and their ratio.
With --repeats N the variants run interleaved N times (medians), and the basic launcher is also timed with
train.threads=1: on a machine other jobs share, torch's default (one thread per core) can oversubscribe the cores
and slow the basic launcher down many times over, which would flatter joblib. --ab adds joblib without the
WarmWorkers callback (its workers then start, and import torch, only after the parent has composed every job).
Each variant also reports its CPU seconds (the sweep's processes together): on 2 busy cores the wall times follow
the load other processes put on the machine, the CPU seconds much less.

    python scripts/bench_sweep.py                 # the measured figure (default steps, 2 parallel jobs)
    python scripts/bench_sweep.py --repeats 3     # interleaved, medians, with the one-thread basic launcher
    python scripts/bench_sweep.py --repeats 3 --ab   # and joblib without WarmWorkers (the lever's A/B)
    python scripts/bench_sweep.py --steps 20      # a quick check that it works
Target: ratio joblib / basic <= 0.6 on 2 cores."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

SWEEP = ["activation=relu,tanh,sigmoid,gelu", "init=xavier_normal,kaiming_normal"]  # 4 x 2 = 8 jobs


def sweep(launcher: list[str], steps: int, depth: int, folder: str) -> tuple[float, float]:
    """Wall and CPU seconds for `gradexp run -m` over SWEEP; every job must have completed."""
    command = [sys.executable, "-m", "gradexp", "run", "-m", *SWEEP, f"train.steps={steps}", f"model.depth={depth}",
               "device=cpu", f"hydra.sweep.dir={folder}", *launcher]
    started, before = time.perf_counter(), os.times()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed, after = time.perf_counter() - started, os.times()
    # the sweep's processes: the parent and the workers it waited for (loky's are its children)
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    statuses = [json.load(open(os.path.join(folder, job, "summary.json")))["status"]
                for job in os.listdir(folder) if os.path.exists(os.path.join(folder, job, "summary.json"))]
    if len(statuses) != 8 or set(statuses) != {"completed"}:
        raise SystemExit(f"sweep in {folder} did not complete 8 jobs: {statuses}")
    return elapsed, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="train.steps per job")
    parser.add_argument("--depth", type=int, default=6, help="model.depth per job")
    parser.add_argument("--n-jobs", type=int, default=2, help="hydra.launcher.n_jobs for joblib")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats (medians); >1 adds basic, 1 thread")
    parser.add_argument("--ab", action="store_true", help="also joblib without the WarmWorkers callback")
    args = parser.parse_args()
    joblib_launcher = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.n_jobs}"]
    variants = {"basic launcher": [], f"joblib (n_jobs={args.n_jobs})": joblib_launcher}
    if args.repeats > 1:
        variants["basic launcher, train.threads=1"] = ["train.threads=1"]
    if args.ab:
        variants[f"joblib (n_jobs={args.n_jobs}), WarmWorkers off"] = [*joblib_launcher, "~hydra.callbacks.warm_workers"]
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpus: dict[str, list[float]] = {name: [] for name in variants}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for i, (name, launcher) in enumerate(variants.items()):
                wall, cpu = sweep(launcher, args.steps, args.depth, os.path.join(tmp, f"{repeat}-{i}"))
                times[name].append(wall)
                cpus[name].append(cpu)
                load.append(os.getloadavg()[0])
    print(f"8 jobs, train.steps={args.steps}, model.depth={args.depth}, cpus={os.cpu_count()}, "
          f"load average (1 min) from {min(load):.1f} to {max(load):.1f}")
    for name, seconds in times.items():
        print(f"{name}: {statistics.median(seconds):.1f} s ({', '.join(f'{s:.1f}' for s in seconds)}), "
              f"CPU {statistics.median(cpus[name]):.1f} s")
    joblib = statistics.median(times[f"joblib (n_jobs={args.n_jobs})"])
    for name in (n for n in variants if n.startswith("basic")):
        print(f"ratio joblib / {name}: {joblib / statistics.median(times[name]):.2f} (target <= 0.6)")
    if args.ab:
        off = statistics.median(times[f"joblib (n_jobs={args.n_jobs}), WarmWorkers off"])
        print(f"ratio joblib / joblib with WarmWorkers off: {joblib / off:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
