"""Sweep jobs whose folder holds an earlier attempt (a re-run sweep, a SLURM requeue), the objective a sweep job
returns to Optuna, launcher options refused before submission, and SIGUSR2 as an interrupt."""
from __future__ import annotations

import json
import os
import signal

import pytest
from omegaconf import OmegaConf

from gradexp.cli import jobs, launchers
from gradexp.config.schema import ConfigError, validate
from gradexp.sinks.summary import read_summary
from gradexp.training.interrupt import Interrupts
from tests.conftest import compose_config
from tests.test_resume import LONG, StopAfter, scalars, start, summary


def job_folder(tmp_path, status=None, files=()):
    run_dir = tmp_path / "0_job"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 0\n")
    if status is not None:
        (run_dir / "summary.json").write_text(json.dumps({"status": status, "final": {"loss/val": 0.25}}))
    for name in files:
        (run_dir / name).write_bytes(b"old")
    return str(run_dir)


@pytest.mark.parametrize("status", ["completed", "diverged"])
def test_a_finished_job_is_skipped_untouched(tmp_path, status):
    run_dir = job_folder(tmp_path, status, files=["checkpoint.pt", "events.out.tfevents.1"])
    before = sorted(os.listdir(run_dir))
    assert jobs.decide(run_dir) == jobs.SKIP
    assert sorted(os.listdir(run_dir)) == before


@pytest.mark.parametrize("status", ["interrupted", "running", None])
def test_a_job_with_a_checkpoint_resumes(tmp_path, status):
    run_dir = job_folder(tmp_path, status, files=["checkpoint.pt", "events.out.tfevents.1"])
    assert jobs.decide(run_dir) == jobs.RESUME
    assert not os.path.exists(os.path.join(run_dir, "attempt-1"))


@pytest.mark.parametrize("status, files", [("failed", ["checkpoint.pt", "events.out.tfevents.1"]),
                                           (None, ["events.out.tfevents.1"])])
def test_a_failed_or_killed_without_checkpoint_job_starts_over_with_old_files_aside(tmp_path, status, files):
    run_dir = job_folder(tmp_path, status, files=files)
    old = sorted(set(os.listdir(run_dir)) - {".hydra"})
    assert jobs.decide(run_dir) == jobs.FRESH
    assert sorted(os.listdir(os.path.join(run_dir, "attempt-1"))) == old
    assert sorted(os.listdir(run_dir)) == [".hydra", "attempt-1"]
    (tmp_path / "0_job" / "events.out.tfevents.2").write_bytes(b"second")  # a second killed attempt
    assert jobs.decide(run_dir) == jobs.FRESH
    assert os.listdir(os.path.join(run_dir, "attempt-2")) == ["events.out.tfevents.2"]


def test_a_fresh_job_folder_is_left_as_hydra_made_it(tmp_path):
    run_dir = job_folder(tmp_path)
    assert jobs.decide(run_dir) == jobs.FRESH
    assert os.listdir(run_dir) == [".hydra"]


def test_a_users_own_files_in_a_job_folder_stay_where_they_are(tmp_path):
    """Only what a run writes moves into attempt-N/: a user's notes (and Hydra's multirun.yaml, where the job folder
    is the sweep folder) are not an earlier attempt, with or without one beside them."""
    run_dir = job_folder(tmp_path)
    for name in ("notes.txt", "multirun.yaml", "summary.json.tmp"):
        (tmp_path / "0_job" / name).write_text("the user's")
    assert jobs.decide(run_dir) == jobs.FRESH
    assert not os.path.exists(os.path.join(run_dir, "attempt-1"))
    for name in ("events.out.tfevents.1", "checkpoint.pt", ".summary.json.gradexp-tmp-0123abcd"):
        (tmp_path / "0_job" / name).write_bytes(b"old")
    (tmp_path / "0_job" / "summary.json").write_text(json.dumps({"status": "failed"}))
    assert jobs.decide(run_dir) == jobs.FRESH
    assert sorted(os.listdir(os.path.join(run_dir, "attempt-1"))) == [
        ".summary.json.gradexp-tmp-0123abcd", "checkpoint.pt", "events.out.tfevents.1", "summary.json"]
    assert sorted(os.listdir(run_dir)) == [".hydra", "attempt-1", "multirun.yaml", "notes.txt", "summary.json.tmp"]


@pytest.mark.parametrize("planted", ["[" * 100000, "fifo"])
def test_a_damaged_summary_reads_as_none(tmp_path, planted):
    """Nesting deeper than the JSON parser's stack (RecursionError), a FIFO (an open would block): no summary."""
    run_dir = job_folder(tmp_path)
    path = os.path.join(run_dir, "summary.json")
    if planted == "fifo":
        os.mkfifo(path)
    else:
        with open(path, "w") as f:
            f.write(planted)
    assert read_summary(run_dir) is None


def test_requeued_job_resumes_bit_identical_to_an_uninterrupted_one(tmp_path, quiet_console):
    """What a requeued SLURM job does: decide() finds the checkpoint, the run continues it (as _task sets resume)."""
    ref, run_dir = str(tmp_path / "ref"), str(tmp_path / "run")
    start(ref, LONG, quiet_console)
    start(run_dir, LONG, quiet_console, stop=StopAfter(6))
    assert jobs.decide(run_dir) == jobs.RESUME
    from gradexp.training.run import run_experiment

    cfg = compose_config(LONG)
    cfg.resume = run_dir
    assert run_experiment(cfg, run_dir=run_dir, overrides=LONG, console=quiet_console).status == "completed"
    assert summary(run_dir) == summary(ref) and scalars(run_dir) == scalars(ref)
    assert jobs.decide(run_dir) == jobs.SKIP


@pytest.mark.parametrize("summary_, metric, direction, expected", [
    ({"status": "completed", "final": {"loss/val": 0.25, "acc/val": 0.9}}, "loss/val", "minimize", 0.25),
    ({"status": "completed", "final": {"loss/val": 0.25, "acc/val": 0.9}}, "acc/val", "maximize", 0.9),
    ({"status": "diverged", "final": {"loss/val": None}}, "loss/val", "minimize", float("inf")),
    ({"status": "failed"}, "acc/val", "maximize", float("-inf")),
    ({"status": "completed", "final": {"loss/val": None}}, "loss/val", "minimize", float("inf")),
    (None, "loss/val", "minimize", float("inf")),
    ({"status": "completed", "final": {"loss/val": "0.1"}}, "loss/val", "minimize", float("inf")),  # tampered types
    ({"status": "completed", "final": [0.1]}, "loss/val", "minimize", float("inf")),
])
def test_objective_is_the_final_metric_or_the_worst_value(summary_, metric, direction, expected):
    assert jobs.objective(summary_, metric, direction) == expected


@pytest.mark.parametrize("key, value", [("objective.metric", "loss/test"), ("objective.direction", "up")])
def test_objective_keys_are_validated(key, value):
    with pytest.raises(ConfigError, match=key):
        validate(compose_config([f"{key}={value}"]))


def slurm_launcher(**changes):
    node = {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
            "timeout_min": 60, "cpus_per_task": 2, "mem_gb": 4, "nodes": 1, "tasks_per_node": 1}
    return OmegaConf.create({**node, **changes})


@pytest.mark.parametrize("key, value", [("timeout_min", -5), ("timeout_min", 0), ("cpus_per_task", 0),
                                        ("mem_gb", -1), ("nodes", 0), ("timeout_min", "soon")])
def test_bad_launcher_options_are_one_line_naming_key_value_and_allowed(key, value):
    with pytest.raises(launchers.LauncherError) as err:
        launchers.check(slurm_launcher(**{key: value}), which=lambda _: "/usr/bin/sbatch")
    message = str(err.value)
    assert f"hydra.launcher.{key}: {value!r}" in message and "allowed" in message and "\n" not in message


def test_slurm_launcher_without_sbatch_is_refused_and_good_options_pass():
    launchers.check(slurm_launcher(), which=lambda _: "/usr/bin/sbatch", answers=lambda: True, partitions=lambda: None)
    with pytest.raises(launchers.LauncherError, match="no SLURM controller answers") as err:
        launchers.check(slurm_launcher(), which=lambda _: "/usr/bin/sbatch", answers=lambda: False)
    assert "\n" not in str(err.value)
    launchers.check(OmegaConf.create({"_target_": "x.JoblibLauncher", "n_jobs": -1}), which=lambda _: None)
    with pytest.raises(launchers.LauncherError, match="sbatch"):
        launchers.check(slurm_launcher(), which=lambda _: None)
    with pytest.raises(launchers.LauncherError, match="n_jobs"):
        launchers.check(OmegaConf.create({"_target_": "x.JoblibLauncher", "n_jobs": 0}))
    # the joblib launcher runs loky whatever backend is named: another name was silently ignored (adversarial test)
    launchers.check(OmegaConf.create({"_target_": "x.JoblibLauncher", "n_jobs": 2, "backend": None}))
    with pytest.raises(launchers.LauncherError, match=r"backend: 'nope' \(allowed: null \| loky"):
        launchers.check(OmegaConf.create({"_target_": "x.JoblibLauncher", "n_jobs": 2, "backend": "nope"}))


@pytest.mark.parametrize("changes, says", [
    ({"partition": "cpu"}, "hydra.launcher.partition: 'cpu' (allowed: a partition of this cluster: debug | gpu;"),
    ({"cpus_per_task": 4}, "hydra.launcher.cpus_per_task: 4 (allowed: at most 2, the most CPUs a node of this cluster"),
    ({"partition": "debug", "cpus_per_task": 3}, "cpus_per_task: 3 (allowed: at most 2, the most CPUs a node of debug"),
])
def test_a_slurm_sweep_the_cluster_cannot_run_is_refused(changes, says):
    """Found by a new user: partition=cpu on a cluster without one failed in sbatch with a hint to re-run, which
    failed the same way; cpus_per_task=4 on 2-CPU nodes stayed pending forever, the sweep waiting past SIGTERM."""
    cluster = {"debug": 2, "gpu": None}  # gpu's nodes differ in size ('8+'): not judged
    if "partition" not in changes:  # without one, the largest node of a cluster whose sizes are all known
        cluster.pop("gpu")
    with pytest.raises(launchers.LauncherError) as err:
        launchers.check(slurm_launcher(**changes), which=lambda _: "/usr/bin/sbatch", answers=lambda: True,
                        partitions=lambda: cluster)
    assert says in str(err.value) and "\n" not in str(err.value)
    for fits in ({"partition": "gpu", "cpus_per_task": 64}, {"partition": "debug", "cpus_per_task": 2}):
        launchers.check(slurm_launcher(**fits), which=lambda _: "/usr/bin/sbatch", answers=lambda: True,
                        partitions=lambda: {"debug": 2, "gpu": None})


@pytest.mark.slow
def test_the_controller_check_agrees_with_sinfo():
    """scontrol ping answers where sinfo does (a cluster up: CI's slurm-up), and not where it does not (sbatch
    installed, no controller: this check is what refuses the sweep before its folder exists)."""
    import shutil
    import subprocess

    if shutil.which("scontrol") is None:
        assert launchers.controller_answers()
        return
    sinfo = subprocess.run(["sinfo", "-h"], capture_output=True, timeout=60).returncode == 0
    assert launchers.controller_answers() == sinfo


def test_usr2_is_a_stop_request_handed_over_to_the_previous_handler():
    received = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: received.append(signum))
    try:
        with Interrupts() as interrupts:
            os.kill(os.getpid(), signal.SIGUSR2)
            assert interrupts.requested and interrupts.exit_code == 128 + signal.SIGUSR2
            assert received == []  # the run stops at the end of its step first
            interrupts.hand_over()
        assert received == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)


def run_sweep(tmp_path, args: list[str]):
    import subprocess
    import sys

    from tests.conftest import TINY

    command = [sys.executable, "-m", "gradexp", "run", "-m", *TINY, "device=cpu", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]])
def test_rerunning_a_sweep_skips_finished_jobs_reruns_failed_ones_and_refuses_a_changed_one(tmp_path, launcher):
    folder = tmp_path / "sweep"
    args = ["activation=relu,tanh", f"hydra.sweep.dir={folder}", *launcher]
    assert run_sweep(tmp_path, args).returncode == 0
    done, failed = sorted(p.parent for p in folder.glob("*/summary.json"))
    finished_at = os.stat(done / "summary.json").st_mtime_ns
    data = json.loads((failed / "summary.json").read_text())
    (failed / "summary.json").write_text(json.dumps({**data, "status": "failed"}))
    again = run_sweep(tmp_path, args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert os.stat(done / "summary.json").st_mtime_ns == finished_at  # skipped, untouched
    assert json.loads((failed / "summary.json").read_text())["status"] == "completed"
    assert json.loads((failed / "attempt-1" / "summary.json").read_text())["status"] == "failed"
    before = sorted(str(p) for p in folder.rglob("*"))
    changed = run_sweep(tmp_path, ["activation=relu,sigmoid", f"hydra.sweep.dir={folder}", *launcher])
    assert changed.returncode == 2 and len(changed.stderr.strip().splitlines()) == 1
    assert sorted(str(p) for p in folder.rglob("*")) == before


@pytest.mark.slow
def test_bad_launcher_option_leaves_nothing_behind(tmp_path):
    done = run_sweep(tmp_path, ["activation=relu,tanh", "hydra/launcher=slurm", "hydra.launcher.timeout_min=-1",
                                "hydra.sweep.dir=sweep"])
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == ("gradexp: invalid value for hydra.launcher.timeout_min: -1 "
                                   "(allowed: an integer > 0 (minutes))")
    assert os.listdir(tmp_path) == []


def test_the_same_signal_twice_at_once_is_one_interrupt_a_later_one_exits(monkeypatch):
    """Found by a new user: a terminal's Ctrl-C reaches a joblib sweep's whole process group and the parent passes it
    on too, so a worker could get SIGINT twice within milliseconds: it exited at the 'second interrupt' with no
    summary, and the parent ended in joblib's TerminatedWorkerError traceback. Twice at once is one interrupt; a
    signal after SAME_INTERRUPT_S, or another signal, is the second (os._exit)."""
    from gradexp.training import interrupt

    exits: list[int] = []
    monkeypatch.setattr(Interrupts, "received", None)  # class-wide: put back after the test
    monkeypatch.setattr(interrupt.os, "_exit", exits.append)
    clock = [100.0]
    monkeypatch.setattr(interrupt.time, "monotonic", lambda: clock[0])
    for later, other in [(0.0, False), (interrupt.SAME_INTERRUPT_S, False), (0.0, True)]:
        handler, exits[:] = Interrupts(), []
        handler._handle(signal.SIGINT, None)
        handler._handle(signal.SIGINT, None)  # the group's and the parent's, together
        assert handler.requested and exits == []
        clock[0] += later
        handler._handle(signal.SIGTERM if other else signal.SIGINT, None)
        assert exits == ([] if later == 0.0 and not other else [128 + (signal.SIGTERM if other else signal.SIGINT)])
