"""SIGKILL `gradexp run` at random moments (some while checkpoint.pt is being written), resume each run, and check
that it ends exactly like the same run left alone: scalars, histograms, images and summary.json bit-identical on CPU.

A kill before the first checkpoint leaves nothing to resume from: the resume starts over (the old files moved into
attempt-1/) and must still end identical. Once the first checkpoint exists, a run that cannot be resumed, or
resumes to different results, counts as corrupt.

    python scripts/inject_faults.py              # 20 kills (README, Reliability)
    python scripts/inject_faults.py --kills 3    # the slow test runs this
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gradexp.sinks.files import TEMPORARY_MARK

# checkpoints every 3 steps of a model big enough that a write takes a few milliseconds
RUN = ["train.steps=40", "log.every=2", "log.histograms_every=4", "train.eval_every=10", "train.checkpoint_every=3",
       "model.width=256", "model.depth=6", "optimizer=adam", "device=cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread: the same arithmetic in every process
WRITING = f".checkpoint.pt{TEMPORARY_MARK}"  # the name a checkpoint write begins with
logging.getLogger("tensorboard").setLevel(logging.ERROR)  # its notice that a resume purged the killed tail


def gradexp(cwd: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gradexp", "run", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=ENV)


def record(run_dir: str) -> dict:
    """Everything a reader sees of a run: summary.json (less timings) and every TensorBoard record by step."""
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    summary.pop("perf", None)
    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    return {
        "summary.json": summary,
        "scalars": {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags["scalars"]},
        "histograms": {t: [(e.step, str(e.histogram_value)) for e in acc.Histograms(t)] for t in tags["histograms"]},
        "images": {t: [(e.step, e.encoded_image_string) for e in acc.Images(t)] for t in tags["images"]},
    }


def kill(cwd: str, rng: random.Random, seconds: float, during_write: bool) -> dict:
    """Start the run, SIGKILL it once its folder exists (at a random moment, or just as a checkpoint write begins);
    what was left."""
    proc = start(cwd)
    run_dir = os.path.join(cwd, "run")
    wait_for_folder(proc, cwd)  # from here on the run must stay consistent (before it, nothing was written)
    deadline, writes_to_skip, seen = time.monotonic() + rng.uniform(0.0, 0.9) * seconds, rng.randint(0, 6), False
    while proc.poll() is None:
        writing = checkpoint_being_written(run_dir)
        if during_write and writing and not seen:
            if writes_to_skip == 0:
                break
            writes_to_skip -= 1
        seen = writing
        if not during_write and time.monotonic() >= deadline:
            break
        time.sleep(0.0005 if during_write else 0.01)
    in_write = checkpoint_being_written(run_dir)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return {"finished_first": proc.returncode == 0 or _finished(os.path.join(cwd, "run")), "in_write": in_write,
            "had_checkpoint": os.path.exists(os.path.join(cwd, "run", "checkpoint.pt"))}


def checkpoint_being_written(run_dir: str) -> bool:
    """The checkpoint's temporary file is there (sinks/files.py: `.checkpoint.pt` + its mark + a random suffix)."""
    try:
        return any(name.startswith(WRITING) for name in os.listdir(run_dir))
    except FileNotFoundError:
        return False


def _finished(run_dir: str) -> bool:
    """Killed after summary.json said 'completed' (while closing): a finished run, compared as it is."""
    try:
        with open(os.path.join(run_dir, "summary.json")) as f:
            return json.load(f)["status"] == "completed"
    except (OSError, ValueError, KeyError):
        return False


def start(cwd: str, stderr: int = subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gradexp", "run", *RUN, "hydra.run.dir=run"], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=stderr, text=True, env=ENV)


def wait_for_folder(proc: subprocess.Popen, cwd: str) -> None:
    while proc.poll() is None and not os.path.isdir(os.path.join(cwd, "run", ".hydra")):
        time.sleep(0.005)


def reference_run(cwd: str) -> tuple[dict, float]:
    """The uninterrupted run's record, and how long it ran once its folder existed."""
    proc = start(cwd, stderr=subprocess.PIPE)  # read by communicate(), so it cannot fill up
    wait_for_folder(proc, cwd)
    began = time.monotonic()
    _, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"the reference run failed: {err}")
    return record(os.path.join(cwd, "run")), time.monotonic() - began


def trial(args: tuple[int, int, float, dict]) -> dict:
    index, seed, seconds, reference = args
    rng = random.Random(seed * 1000 + index)
    with tempfile.TemporaryDirectory() as cwd:
        outcome = kill(cwd, rng, seconds, during_write=index % 2 == 1)
        if outcome["finished_first"]:
            return {**outcome, "resumed": True, "identical": record(os.path.join(cwd, "run")) == reference}
        resumed = gradexp(cwd, "resume=run")
        outcome["resumed"] = resumed.returncode == 0
        outcome["error"] = resumed.stderr.strip().splitlines()[-1:] if resumed.returncode else []
        got = record(os.path.join(cwd, "run")) if outcome["resumed"] else {}
        outcome["identical"] = got == reference
        outcome["differs_in"] = [k for k in reference if got.get(k) != reference[k]]
        return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as cwd:
        reference, seconds = reference_run(cwd)
    work = [(i, options.seed, seconds, reference) for i in range(options.kills)]
    with ThreadPoolExecutor(options.jobs) as pool:
        results = list(pool.map(trial, work))
    after_first = [r for r in results if r["had_checkpoint"]]
    corrupt = [r for r in after_first if not (r["resumed"] and r["identical"])]
    differ = [r for r in results if r["resumed"] and not r["identical"]]
    for r in [*corrupt, *[r for r in results if not r["resumed"]]]:
        print(f"FAIL {r}")
    print(f"{len(results)} SIGKILLs ({sum(r['in_write'] for r in results)} during a checkpoint write, "
          f"{len(results) - len(after_first)} before the first checkpoint, "
          f"{sum(r['finished_first'] for r in results)} after the run had completed); "
          f"{len(corrupt)} of {len(after_first)} runs with a checkpoint ended corrupt or unresumable; "
          f"{len(differ)} resumed runs differ from the uninterrupted run in scalars, histograms, images or "
          f"summary.json (reference run: {seconds:.1f} s from its folder's creation to exit)")
    return 1 if corrupt or differ or any(not r["resumed"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
