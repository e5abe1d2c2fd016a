"""Parallel launchers: how torch threads are divided among jobs, and real joblib / submitit_local sweeps (slow)."""
from __future__ import annotations

import glob
import json
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from gradexp.training.threads import available_cpus, threads_per_job

JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
SUBMITIT = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
BASIC = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
TINY = ["train.steps=3", "train.eval_every=2", "log.every=1", "train.batch_size=16", "model.width=8", "model.depth=2"]


@pytest.mark.parametrize("n_jobs, cpus, expected", [(2, 2, 1), (4, 16, 4), (-1, 8, 1), (-2, 8, 1), (3, 16, 5), (32, 4, 1)])
def test_joblib_divides_the_cpus_among_parallel_jobs(n_jobs, cpus, expected):
    assert threads_per_job(OmegaConf.create({"_target_": JOBLIB, "n_jobs": n_jobs}), cpus) == expected


def test_submitit_uses_cpus_per_task_and_basic_leaves_torch_alone():
    assert threads_per_job(OmegaConf.create({"_target_": SUBMITIT, "cpus_per_task": 3}), 16) == 3
    assert threads_per_job(OmegaConf.create({"_target_": SUBMITIT, "cpus_per_task": None}), 16) is None
    assert threads_per_job(OmegaConf.create({"_target_": BASIC}), 16) is None


def sweep(tmp_path, launcher: list[str]) -> list[dict]:
    folder = tmp_path / "sweep"
    command = [sys.executable, "-m", "gradexp", "run", "-m", "activation=relu,tanh", *TINY, "device=cpu",
               f"hydra.sweep.dir={folder}", *launcher]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.load(open(p)) for p in sorted(glob.glob(str(folder / "*" / "summary.json")))]


@pytest.mark.slow
def test_joblib_sweep_runs_every_job_with_divided_threads(tmp_path):
    summaries = sweep(tmp_path, ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"])
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    assert {s["perf"]["torch_threads"] for s in summaries} == {max(1, available_cpus() // 2)}
    assert all(s["verdict"]["label"] in ("healthy", "vanishing", "exploding") for s in summaries)


@pytest.mark.slow
def test_the_idle_joblib_workers_end_with_the_sweep_and_other_launchers_are_left_alone():
    from joblib import Parallel, delayed
    from joblib.externals.loky import reusable_executor

    from gradexp.cli.launchers import ReleaseWorkers

    assert Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(4)) == [0, 1, 2, 3]
    workers = list(reusable_executor._executor._processes.values())
    assert workers and all(w.is_alive() for w in workers)
    basic = OmegaConf.create({"hydra": {"launcher": {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}}})
    ReleaseWorkers().on_multirun_end(basic)
    assert all(w.is_alive() for w in workers)  # not a joblib sweep: its pool is not this callback's business
    joblib = OmegaConf.create({"hydra": {"launcher": {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"}}})
    ReleaseWorkers().on_multirun_end(joblib)
    for worker in workers:
        worker.join(timeout=10)
    assert not any(w.is_alive() for w in workers)


@pytest.mark.slow
def test_submitit_local_sweep_runs_every_job(tmp_path):
    summaries = sweep(tmp_path, ["hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=1",
                                 "hydra.launcher.timeout_min=5"])
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    assert {s["perf"]["torch_threads"] for s in summaries} == {1}


def test_slurm_share_applies_when_no_parallel_launcher_divides_the_cpus():
    slurm = {"SLURM_CPUS_PER_TASK": "3"}
    assert threads_per_job(OmegaConf.create({"_target_": BASIC}), 16, slurm) == 3
    assert threads_per_job(OmegaConf.create({"_target_": BASIC}), 16, {}) is None
    assert threads_per_job(OmegaConf.create({"_target_": JOBLIB, "n_jobs": 2}), 16, slurm) == 8  # joblib divides


def test_explicit_train_threads_wins_and_is_recorded(run_tiny):
    import os

    import torch
    from tensorboard.plugins.hparams import plugin_data_pb2

    from tests.test_tb_views import accumulator, plugin_content

    before = torch.get_num_threads()
    torch.set_num_threads(2)  # what a launcher's share would have set
    try:
        outcome, run_dir = run_tiny(["train.threads=1"])
    finally:
        torch.set_num_threads(before)
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    assert summary["perf"]["torch_threads"] == 1 == outcome.perf["torch_threads"]
    start = plugin_content(accumulator(run_dir), "hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
    assert hparams["perf.torch_threads"].number_value == 1 and hparams["train.threads"].number_value == 1


def test_train_threads_must_be_positive():
    from gradexp.config.schema import ConfigError, validate
    from tests.conftest import compose_config

    with pytest.raises(ConfigError, match="train.threads"):
        validate(compose_config(["train.threads=0"]))


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


@pytest.mark.parametrize("task, params, batch, expected", [
    (["activation=relu,tanh,sigmoid,gelu", "init=xavier_normal,kaiming_normal", "device=cpu"], None, None, 8),
    (["model.depth=range(2,8)"], {"init": "xavier_normal,kaiming_normal"}, None, 12),  # a preset's declared sweep
    (["model.depth=2,3,4"], None, 2, 2),  # hydra.sweeper.max_batch_size: the first batch
    (["activation=glob(*)"], None, None, None),  # only Hydra's config loader can expand it
])
def test_warm_workers_count_the_jobs_of_the_first_batch(task, params, batch, expected):
    from gradexp.cli.launchers import sweep_size

    config = OmegaConf.create({"hydra": {"sweeper": {"_target_": BASIC_SWEEPER, "params": params, "max_batch_size": batch},
                                         "overrides": {"task": task}}})
    assert sweep_size(config) == expected


@pytest.mark.parametrize("task, empty", [(["model.depth=range(4,2)"], "model.depth=range(4,2)"),
                                         (["model.depth=2,3", "seed=range(0,0)"], "seed=range(0,0)"),
                                         (["model.depth=2,3"], None), (["activation=glob(nothing*)"], None)])
def test_a_sweep_of_no_job_is_found_before_it_starts(task, empty):
    """Found by an adversarial test: Hydra launched 0 jobs, exited 0 and left a folder holding only multirun.yaml;
    FolderGuard now refuses such a sweep in one line (exit 2) before the folder is made."""
    from gradexp.cli.launchers import empty_sweep

    config = OmegaConf.create({"hydra": {"sweeper": {"_target_": BASIC_SWEEPER, "params": None}, "overrides": {"task": task}}})
    assert empty_sweep(config) == empty


def test_warm_workers_do_not_guess_another_sweepers_size():
    from gradexp.cli.launchers import sweep_size

    optuna = OmegaConf.create({"hydra": {"sweeper": {"_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"},
                                         "overrides": {"task": ["optimizer.lr=interval(0.001,0.1)"]}}})
    assert sweep_size(optuna) is None


def _worker_state() -> tuple:
    import os

    return os.getpid(), all(m in sys.modules for m in ("gradexp.training.run", "torch._dynamo", "matplotlib"))


@pytest.mark.slow
def test_warm_workers_are_the_pool_the_launchers_parallel_reuses():
    """The pool WarmWorkers starts is the one hydra-joblib-launcher's Parallel (same options) then runs jobs on: its
    workers already hold the imports. Ended as a stopped sweep ends it, the pool's processes exit."""
    from joblib import Parallel, delayed
    from joblib.externals.loky import reusable_executor

    from gradexp.cli.launchers import release_loky_workers, start_loky_workers

    launcher = OmegaConf.create({"_target_": JOBLIB, "n_jobs": 2, "backend": None, "prefer": "processes",
                                 "require": None, "verbose": 0, "timeout": None, "pre_dispatch": "2*n_jobs",
                                 "batch_size": "auto", "temp_folder": None, "max_nbytes": None, "mmap_mode": "r"})
    start_loky_workers(launcher, jobs=8).join(timeout=120)
    warm = set(reusable_executor._executor._processes)
    options = {k: v for k, v in OmegaConf.to_container(launcher).items() if k != "_target_"}
    states = Parallel(**{**options, "backend": "loky"})(delayed(_worker_state)() for _ in range(4))
    assert {pid for pid, _ in states} <= warm and len(warm) == 2
    assert all(imported for _, imported in states)
    workers = list(reusable_executor._executor._processes.values())
    release_loky_workers()
    for worker in workers:
        worker.join(timeout=10)
    assert not any(w.is_alive() for w in workers)


@pytest.mark.parametrize("n_jobs,jobs", [(1, 8), (4, 1)])
def test_a_sweep_of_one_worker_is_not_warmed_in_this_process(n_jobs, jobs):
    """With one worker joblib runs the jobs in the parent: warming up there imported torch on a second thread while
    the first job imported it too, and torch's import cycle failed every job (found by an adversarial test)."""
    from gradexp.cli.launchers import start_loky_workers

    assert start_loky_workers(OmegaConf.create({"_target_": JOBLIB, "n_jobs": n_jobs}), jobs=jobs) is None


@pytest.mark.slow
def test_a_stopped_sweep_ends_the_workers_still_warming_up():
    from joblib.externals.loky import reusable_executor

    from gradexp.cli.launchers import release_loky_workers, start_loky_workers

    thread = start_loky_workers(OmegaConf.create({"_target_": JOBLIB, "n_jobs": 2}), jobs=2)
    while reusable_executor._executor is None or len(reusable_executor._executor._processes) < 2:
        thread.join(timeout=0.05)
    workers = list(reusable_executor._executor._processes.values())
    release_loky_workers()  # what run_app does when Hydra refuses the sweep while the workers import
    thread.join(timeout=60)
    for worker in workers:
        worker.join(timeout=10)
    assert not thread.is_alive() and not any(w.is_alive() for w in workers)


@pytest.mark.slow
def test_warmed_joblib_workers_give_the_basic_launchers_results(tmp_path):
    """WarmWorkers only imports: each job's summary is the basic launcher's (one torch thread in both)."""
    (tmp_path / "basic").mkdir(), (tmp_path / "joblib").mkdir()
    basic = sweep(tmp_path / "basic", ["train.threads=1"])
    joblib = sweep(tmp_path / "joblib", ["train.threads=1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"])
    assert [s["final"] for s in joblib] == [s["final"] for s in basic] and basic[0]["final"]


@pytest.mark.slow
@pytest.mark.parametrize("to_group", [False, True], ids=["to the parent", "to the group (Ctrl-C)"])
def test_a_signal_to_a_joblib_sweep_stops_every_job_and_leaves_no_worker(tmp_path, to_group):
    """Found by an adversarial test: a SIGTERM to `gradexp run -m hydra/launcher=joblib` reached the parent alone;
    the jobs trained on to the end, and outlived it. Now the parent passes it on: the running jobs stop after their
    step (interrupted, with a checkpoint), the queued one is recorded interrupted without starting, the command exits
    143, and no worker process is left. Found by a new user: a terminal's Ctrl-C reaches the whole process group, and
    with the parent's pass the workers got it twice at once: each exited at the 'second interrupt' without its
    summary, and the parent ended in joblib's TerminatedWorkerError traceback."""
    import os
    import signal
    import time

    command = [sys.executable, "-m", "gradexp", "run", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
               "seed=0,1,2", "train.steps=1000000", "train.checkpoint_every=100", "device=cpu", "hydra.sweep.dir=sw"]
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=to_group)  # its own group, as a terminal's foreground job has
    workers: list[int] = []
    try:
        while len(glob.glob(str(tmp_path / "sw" / "*" / "checkpoint.pt"))) < 2:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        workers = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                                      text=True).stdout.split()]
        if to_group:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:  # a failure leaves no sweep training on
        for pid in [proc.pid, *workers]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert proc.returncode == (130 if to_group else 143) and "Traceback" not in err, err
    statuses = [json.load(open(p))["status"] for p in sorted(glob.glob(str(tmp_path / "sw" / "*" / "summary.json")))]
    assert statuses == ["interrupted"] * 3
    assert workers and _still_running(workers, within=10.0) == []  # none outlived the sweep


def _still_running(pids: list[int], within: float) -> list[int]:
    """Those of `pids` still running (not gone, not a zombie awaiting its reaper) after up to `within` seconds."""
    import time

    deadline = time.monotonic() + within
    while True:
        running = []
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                        running.append(pid)
            except FileNotFoundError:
                pass
        if not running or time.monotonic() > deadline:
            return running
        time.sleep(0.2)
