"""The SLURM tier: a real sweep through hydra/launcher=slurm on a local cluster (../shared/tools/slurm-up; .ci/run
stands one up). One job is cancelled, one requeued mid-run; the requeued one resumes from its checkpoint, and
re-running the sweep finishes the cancelled one. Skipped, with the reason, where `sinfo` does not answer."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest


def _sinfo_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


pytestmark = [pytest.mark.slurm, pytest.mark.slow,
              pytest.mark.skipif(not _sinfo_answers(), reason="no SLURM cluster answers sinfo "
                                 "(../shared/tools/slurm-up stands one up; .ci/run does)")]

# long enough to catch jobs mid-run (checkpoints every 20 steps), tiny enough for two shared cores
JOB = ["train.steps=20000", "train.checkpoint_every=200", "train.eval_every=1000", "log.every=100",
       "train.batch_size=16", "model.width=8", "device=cpu", "hydra/launcher=slurm",
       "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10"]


def gradexp_sweep(folder, extra=()) -> list[str]:
    return [sys.executable, "-m", "gradexp", "run", "-m", "activation=relu,tanh", "model.depth=2,3", *JOB,
            f"hydra.sweep.dir={folder}", *extra]


def our_jobs(folder) -> dict[str, str]:
    """job id -> state, for the jobs whose submitit folder is under `folder`."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %T %o"], capture_output=True, text=True).stdout
    return {line.split()[0]: line.split()[1] for line in out.splitlines() if str(folder) in line}


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1)
    pytest.fail(f"timed out waiting for {what}")


def start_now(job: str, within: float = 60) -> None:
    """SLURM holds a requeued job (Reason=BeginTime) ~2 minutes before it may start again: once it is pending, let it
    start now, as `scontrol update` lets its owner (the test's longest wait otherwise: 223 s of the SLURM tier's).
    Only a shortcut: where it cannot be taken (the job already left PENDING, the update refused) the test waits out
    SLURM's hold, as its later waits allow."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        state = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
        if "JobState=PENDING" in state:
            update = ["scontrol", "update", f"JobId={job}", "StartTime=now"]
            if subprocess.run(update, capture_output=True).returncode == 0:
                return
        elif "JobState=RUNNING" in state or "JobState=COMPLETED" in state:
            return
        time.sleep(1)


def mid_run(folder) -> list[str]:
    """Running jobs that are training: a checkpoint in their folder (array index i -> folder i_*), no summary yet."""
    def training(job: str) -> bool:
        run = list(folder.glob(f"{job.split('_')[-1]}_*"))
        return bool(run) and (run[0] / "checkpoint.pt").exists() and not (run[0] / "summary.json").exists()
    return sorted(j for j, state in our_jobs(folder).items() if state == "RUNNING" and training(j))


def test_sweep_survives_scancel_and_requeue_and_resumes_when_rerun(tmp_path):
    folder = tmp_path / "sweep"
    parent = subprocess.Popen(gradexp_sweep(folder), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        # two cores, one CPU per job: two jobs train at once
        cancelled, requeued = wait_for(lambda: mid_run(folder)[:2] if len(mid_run(folder)) >= 2 else None, 240,
                                       "two jobs training")
        subprocess.run(["scancel", cancelled], check=True)
        subprocess.run(["scontrol", "requeue", requeued], check=True)
        start_now(requeued)
        _, stderr = parent.communicate(timeout=600)
    finally:
        if parent.poll() is None:
            parent.kill()
    assert parent.returncode == 1
    assert len(stderr.strip().splitlines()) == 1 and "a SLURM job ended without a result" in stderr, stderr[-3000:]
    wait_for(lambda: not our_jobs(folder), 420, "the other jobs to end")
    wait_for(lambda: (next(folder.glob(f"{requeued.split('_')[-1]}_*")) / "summary.json").exists(), 420,
             "the requeued job to finish")  # SLURM restarted it from the top: it continued its checkpoint
    logs = "".join(p.read_text() for p in (folder / ".submitit").glob(f"{requeued}/*.err"))
    assert "continues from its checkpoint" in logs, logs[-3000:]
    again = subprocess.run(gradexp_sweep(folder), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sorted(folder.glob("*/summary.json"))]
    assert [(s["status"], s["steps"]) for s in summaries] == [("completed", 20000)] * 4
    assert {s["perf"]["torch_threads"] for s in summaries} == {1}
    assert not list(folder.glob("*/attempt-*"))  # every job continued its own run; nothing started over


def test_a_signal_to_a_slurm_sweep_stops_its_running_jobs_and_cancels_the_pending(tmp_path):
    """Found by a new user: SIGTERM or Ctrl-C to `gradexp run -m hydra/launcher=slurm` said 'stopping after this
    step' and waited on: the jobs trained on (a pending one even started after it). The parent passes the signal on:
    the running jobs stop after their step (interrupted, a checkpoint), the pending ones are cancelled, and the command
    exits 143 with one line saying how to continue."""
    import signal

    folder = tmp_path / "sweep"
    command = [arg if not arg.startswith("train.steps=") else "train.steps=2000000" for arg in gradexp_sweep(folder)]
    parent = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(mid_run(folder)) >= 2, 240, "two jobs training")
        parent.send_signal(signal.SIGTERM)
        _, stderr = parent.communicate(timeout=180)
    finally:
        if parent.poll() is None:
            parent.kill()
        wait_for(lambda: not our_jobs(folder) or subprocess.run(["scancel", *our_jobs(folder)]).returncode is None,
                 120, "the sweep's jobs to end")  # none is left behind, whatever happened
    assert parent.returncode == 143, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("gradexp: ")]
    assert lines[-1].startswith("gradexp: the sweep stopped (SIGTERM)") and "Traceback" not in stderr, stderr[-3000:]
    # a pending job SLURM started as a running one stopped is cancelled running: interrupted too, or never started
    statuses = [json.loads(p.read_text())["status"] for p in folder.glob("*/summary.json")]
    assert 2 <= len(statuses) <= 4 and set(statuses) == {"interrupted"}, statuses
