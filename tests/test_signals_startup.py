"""Signals in the first moments (subprocesses, marked slow): before `gradexp run` has its own handlers in place, and
while a joblib sweep's workers are still warming up. Exit 130/143, one line at most, never a traceback."""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc/<pid>/status")]


def _catches(pid: int, sig: int) -> bool:
    """Whether process `pid` has a handler for `sig` (SigCgt in /proc/<pid>/status)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    except (FileNotFoundError, StopIteration, ProcessLookupError):
        return False
    return bool(caught & (1 << (sig - 1)))


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_before_the_run_catches_it_is_one_line_and_leaves_no_run(tmp_path, sig, code):
    """Found by an adversarial test: Ctrl-C in the first ~0.1 s of `gradexp run` (while Hydra was imported) printed a
    KeyboardInterrupt traceback, exit -2; SIGTERM there ended it silently with -15. The signal is sent as soon as the
    process catches SIGTERM at all (the command's first line; unfixed, only run_app's Interrupts, once it runs)."""
    proc = subprocess.Popen([sys.executable, "-m", "gradexp", "run", "train.steps=3000", "hydra.run.dir=e"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while not _catches(proc.pid, signal.SIGTERM):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.002)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == code, err
    assert "Traceback" not in err and len(lines) <= 1, err
    assert lines == [f"gradexp: interrupted ({signal.Signals(sig).name}) before the run started"], err
    assert not (tmp_path / "e").exists()  # nothing that claims to be a run


def _loky_workers(parent: int) -> list[int]:
    children = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout.split()
    workers = []
    for pid in map(int, children):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"loky" in f.read() and b"resource_tracker" not in open(f"/proc/{pid}/cmdline", "rb").read():
                    workers.append(pid)
        except FileNotFoundError:
            pass
    return workers


@pytest.mark.parametrize("to_group", [False, True], ids=["SIGTERM to the parent", "Ctrl-C to the group"])
def test_a_signal_while_the_joblib_workers_warm_up_stops_the_sweep_cleanly(tmp_path, to_group):
    """Found by an adversarial test: a signal while WarmWorkers' loky workers imported the training stack killed them
    (SIGTERM) or raised KeyboardInterrupt there: 'Exception in thread gradexp-warm-workers', then joblib's
    TerminatedWorkerError or 'executor ... has been shutdown' traceback, exit 1, and no job recorded. As without
    WarmWorkers: exit 143/130, every job recorded interrupted. Sent once both workers catch SIGTERM (warm_up began)
    or, where they never do during warm-up (unfixed), 1.5 s after they started: inside their imports either way."""
    command = [sys.executable, "-m", "gradexp", "run", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
               "activation=relu,tanh,sigmoid,gelu", "train.steps=4000", "device=cpu", "hydra.sweep.dir=sw"]
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own group, as a terminal's foreground job has
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            workers = _loky_workers(proc.pid)
            time.sleep(0.01)
        started = time.monotonic()
        while not all(_catches(pid, signal.SIGTERM) for pid in workers) and time.monotonic() - started < 1.5:
            time.sleep(0.005)
        assert not glob.glob(str(tmp_path / "sw" / "*" / "summary.json"))  # still warming up: no job has run
        if to_group:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=180)
    finally:
        for pid in [proc.pid, *workers]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert proc.returncode == (130 if to_group else 143), err
    assert "Traceback" not in err and "Exception in thread" not in err, err
    statuses = [json.load(open(p))["status"] for p in sorted(glob.glob(str(tmp_path / "sw" / "*" / "summary.json")))]
    assert statuses == ["interrupted"] * 4, err
