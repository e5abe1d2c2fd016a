"""Start-up time of the `gradexp` command: `gradexp --help` (target < 0.3 s) and `gradexp run --help` (< 2 s), each
run as the user runs it (the installed console script, a fresh process), interleaved, median of the repeats.
Also says whether each imported torch (neither should: torch alone is ~1.4 s of imports on a 2-core machine).

    python scripts/bench_startup.py [--repeats 7]
    python -X importtime -c "from gradexp.cli.main import main; main(['run', '--help'])" 2> imports.txt  # where"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

COMMANDS = {"gradexp --help": ["--help"], "gradexp run --help": ["run", "--help"]}
TARGETS = {"gradexp --help": 0.3, "gradexp run --help": 2.0}
PROBE = ("import sys; from gradexp.cli.main import main\ntry: main({args!r})\nexcept SystemExit: pass\n"
         "print('torch' in sys.modules, file=sys.stderr)")


def console_script() -> list[str]:
    """The installed `gradexp` beside this interpreter (what a user types), else `python -m gradexp`."""
    script = os.path.join(os.path.dirname(sys.executable), "gradexp")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "gradexp"]


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def imports_torch(args: list[str]) -> bool:
    done = subprocess.run([sys.executable, "-c", PROBE.format(args=args)], capture_output=True, text=True, check=True)
    return done.stderr.strip().splitlines()[-1] == "True"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    base = console_script()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    timed([*base, "--help"])  # warm the file cache: the first start of any Python program pays for its disk reads
    for _ in range(args.repeats):  # interleaved: a load spike hits both commands alike
        for name, argv in COMMANDS.items():
            times[name].append(timed([*base, *argv]))
    print(f"{' '.join(base)}; {args.repeats} interleaved repeats, cpus={os.cpu_count()}")
    for name, argv in COMMANDS.items():
        median = statistics.median(times[name])
        runs = ", ".join(f"{t:.2f}" for t in times[name])
        print(f"{name}: median {median:.2f} s (target < {TARGETS[name]} s; runs: {runs}); imports torch: "
              f"{imports_torch(argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
