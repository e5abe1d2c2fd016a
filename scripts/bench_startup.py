"""Start-up time of the `gradexp` command: `gradexp --help` (target < 0.3 s) and `gradexp run --help` (< 2 s), and
for scale a refused bad value and the default experiment end to end (500 steps, every file written, the process
gone), each run as the user runs it (the installed console script, a fresh process, its own run folder in a temporary
directory), interleaved, median of the repeats. Also says whether each imported torch (neither help should: torch
alone is ~1.4 s of imports on a 2-core machine).

    python scripts/bench_startup.py [--repeats 7]
    python -X importtime -c "from gradexp.cli.main import main; main(['run', '--help'])" 2> imports.txt  # where"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

COMMANDS = {"gradexp --help": ["--help"], "gradexp run --help": ["run", "--help"],
            "gradexp run train.steps=-3 (refused, exit 2)": ["run", "train.steps=-3"],
            "gradexp run (the default experiment)": ["run"]}
TARGETS = {"gradexp --help": 0.3, "gradexp run --help": 2.0}  # the others: no target, the scale of a run
EXIT = {"gradexp run train.steps=-3 (refused, exit 2)": 2}
PROBE = ("import sys; from gradexp.cli.main import main\ntry: main({args!r})\nexcept SystemExit: pass\n"
         "print('torch' in sys.modules, file=sys.stderr)")


def console_script() -> list[str]:
    """The installed `gradexp` beside this interpreter (what a user types), else `python -m gradexp`."""
    script = os.path.join(os.path.dirname(sys.executable), "gradexp")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "gradexp"]


def timed(command: list[str], code: int = 0) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != code:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode} (expected {code}): {done.stderr.strip()}")
    return elapsed


def with_folder(argv: list[str], folder: str) -> list[str]:
    """A run (not its help) gets its own new run folder, so no repeat finds the last one's run there."""
    return [*argv, f"hydra.run.dir={folder}"] if argv[:1] == ["run"] and "--help" not in argv else argv


def imports_torch(args: list[str]) -> bool:
    done = subprocess.run([sys.executable, "-c", PROBE.format(args=args)], capture_output=True, text=True)
    return done.stderr.strip().splitlines()[-1] == "True"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    base = console_script()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    timed([*base, "--help"])  # warm the file cache: the first start of any Python program pays for its disk reads
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):  # interleaved: a load spike hits every command alike
            for k, (name, argv) in enumerate(COMMANDS.items()):
                command = [*base, *with_folder(argv, os.path.join(tmp, f"{r}-{k}"))]
                times[name].append(timed(command, EXIT.get(name, 0)))
        print(f"{' '.join(base)}; {args.repeats} interleaved repeats, cpus={os.cpu_count()}")
        for k, (name, argv) in enumerate(COMMANDS.items()):
            median = statistics.median(times[name])
            runs = ", ".join(f"{t:.2f}" for t in times[name])
            target = f"target < {TARGETS[name]} s; " if name in TARGETS else ""
            torch_loaded = imports_torch(with_folder(argv, os.path.join(tmp, f"probe-{k}")))
            print(f"{name}: median {median:.2f} s ({target}runs: {runs}); imports torch: {torch_loaded}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
