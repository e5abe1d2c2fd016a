"""Wall time of one 8-job sweep run by Hydra's basic launcher (one job after another) and by
`hydra/launcher=joblib` (jobs in parallel, torch threads divided among them); prints both and their ratio.

    python scripts/bench_sweep.py                 # the measured figure (default steps, 2 parallel jobs)
    python scripts/bench_sweep.py --steps 20      # a quick check that it works
Target: ratio joblib / basic <= 0.6 on 2 cores."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

SWEEP = ["activation=relu,tanh,sigmoid,gelu", "init=xavier_normal,kaiming_normal"]  # 4 x 2 = 8 jobs


def sweep(launcher: list[str], steps: int, depth: int, folder: str) -> float:
    """Seconds for `gradexp run -m` over SWEEP; every job must have completed."""
    command = [sys.executable, "-m", "gradexp", "run", "-m", *SWEEP, f"train.steps={steps}", f"model.depth={depth}",
               "device=cpu", f"hydra.sweep.dir={folder}", *launcher]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    statuses = [json.load(open(os.path.join(folder, job, "summary.json")))["status"]
                for job in os.listdir(folder) if os.path.exists(os.path.join(folder, job, "summary.json"))]
    if len(statuses) != 8 or set(statuses) != {"completed"}:
        raise SystemExit(f"sweep in {folder} did not complete 8 jobs: {statuses}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="train.steps per job")
    parser.add_argument("--depth", type=int, default=6, help="model.depth per job")
    parser.add_argument("--n-jobs", type=int, default=2, help="hydra.launcher.n_jobs for joblib")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        basic = sweep([], args.steps, args.depth, os.path.join(tmp, "basic"))
        joblib = sweep(["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.n_jobs}"], args.steps, args.depth,
                       os.path.join(tmp, "joblib"))
    print(f"8 jobs, train.steps={args.steps}, model.depth={args.depth}, cpus={os.cpu_count()}")
    print(f"basic launcher: {basic:.1f} s")
    print(f"joblib (n_jobs={args.n_jobs}): {joblib:.1f} s")
    print(f"ratio joblib/basic: {joblib / basic:.2f} (target <= 0.6)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
