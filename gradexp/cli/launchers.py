"""Launcher options checked before a sweep submits anything (FolderGuard.on_multirun_start calls `check`).

submitit would otherwise hand a negative timeout or zero CPUs to sbatch, which fails with a traceback after the
sweep folder exists; without SLURM installed, submitit fails the same way. Each is one line here, exit 2, and
the sweep folder is never created."""
from __future__ import annotations

import itertools
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
from typing import Any, Callable, Optional

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

# jobs in one sweep at most: a larger one is a typo (range(1,99999999999)), and Hydra's basic sweeper lists every job's
# overrides before it launches any (found by an adversarial test: that list filled 24 GB until the kernel killed it)
MAX_SWEEP_JOBS = 100_000
# key under hydra.launcher, the check, what is allowed; a key the launcher does not have is not checked
_RANGES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("timeout_min", lambda v: v > 0, "an integer > 0 (minutes)"),
    ("cpus_per_task", lambda v: v is None or v >= 1, "an integer >= 1, or null"),
    ("mem_gb", lambda v: v is None or v > 0, "a number > 0, or null"),
    ("nodes", lambda v: v >= 1, "an integer >= 1"),
    ("tasks_per_node", lambda v: v >= 1, "an integer >= 1"),
    ("gpus_per_node", lambda v: v is None or v >= 0, "an integer >= 0, or null"),
    ("signal_delay_s", lambda v: v >= 0, "an integer >= 0 (seconds)"),
    ("max_num_timeout", lambda v: v >= 0, "an integer >= 0"),
    ("array_parallelism", lambda v: v >= 1, "an integer >= 1"),
    ("n_jobs", lambda v: v != 0, "a non-zero integer (joblib: -1 = all CPUs)"),
    # hydra-joblib-launcher runs loky whatever is set (threads do not suit Hydra's jobs): another name was ignored
    ("backend", lambda v: v in (None, "loky"), "null | loky (the joblib launcher always runs loky)"),
]


_signalled = False  # a signal was passed on to loky's workers (signal_loky_workers): release them gently


class LauncherError(Exception):
    """str() is the one line the user sees."""


def check(launcher: Any, which: Callable[[str], Optional[str]] = shutil.which,
          answers: Callable[[], bool] = lambda: controller_answers(),
          partitions: Callable[[], Optional[dict[str, Optional[int]]]] = lambda: cluster_partitions()) -> None:
    """Raise LauncherError for the first launcher option that makes no sense, or a SLURM launcher without sbatch or
    without a controller that answers (sbatch would fail after the sweep folder exists, with its error twice), a
    partition the cluster does not have, or more CPUs a task than any node of it has."""
    for key, ok, allowed in _RANGES:
        value = OmegaConf.select(launcher, key, default=None) if key in launcher else None
        if key in launcher and not _ok(ok, value):
            raise LauncherError(f"invalid value for hydra.launcher.{key}: {value!r} (allowed: {allowed})")
    if not str(launcher.get("_target_", "")).endswith("SlurmLauncher"):
        return
    if which("sbatch") is None:
        raise LauncherError("a SLURM launcher submits with SLURM's sbatch, which is not on PATH here "
                            "(run the sweep on a SLURM login node, or use hydra/launcher=joblib)")
    if not answers():
        raise LauncherError("a SLURM launcher: sbatch is here but no SLURM controller answers (scontrol ping: "
                            "down or unreachable); run the sweep where the cluster answers, or use hydra/launcher=joblib")
    _check_fits_the_cluster(launcher, partitions())


def _check_fits_the_cluster(launcher: Any, cluster: Optional[dict[str, Optional[int]]]) -> None:
    """Found by a new user: an unknown partition failed in sbatch with a hint to re-run (which failed the same way),
    and a task asking for more CPUs than a node has stayed pending forever, the sweep waiting on it past SIGTERM."""
    if not cluster:
        return
    partition = launcher.get("partition")
    if partition is not None and str(partition) not in cluster:
        raise LauncherError(f"invalid value for hydra.launcher.partition: {partition!r} (allowed: a partition of this "
                            f"cluster: {' | '.join(sorted(cluster))}; sinfo lists them)")
    sizes = [cluster[str(partition)]] if partition is not None else list(cluster.values())
    cpus = launcher.get("cpus_per_task")
    most = None if None in sizes else max(sizes)
    if isinstance(cpus, int) and most is not None and cpus > most:
        raise LauncherError(f"invalid value for hydra.launcher.cpus_per_task: {cpus} (allowed: at most {most}, the "
                            f"most CPUs a node of {partition or 'this cluster'} has; SLURM would keep the job pending)")


def cluster_partitions(timeout: float = 30.0) -> Optional[dict[str, Optional[int]]]:
    """Partition -> the CPUs of its nodes (None where they differ: sinfo writes '2+'), from `sinfo -h -o '%P %c'`
    (the default partition's name ends in '*'); None where sinfo is missing or does not answer: sbatch will say."""
    if shutil.which("sinfo") is None:
        return None
    try:
        listed = subprocess.run(["sinfo", "-h", "-o", "%P %c"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if listed.returncode != 0:
        return None
    cluster: dict[str, Optional[int]] = {}
    for line in listed.stdout.splitlines():
        name, _, cpus = line.strip().partition(" ")
        if name:
            cluster[name.rstrip("*")] = int(cpus) if cpus.strip().isdigit() else None
    return cluster or None


def controller_answers(timeout: float = 30.0) -> bool:
    """`scontrol ping` exits 0 when slurmctld answers, 1 when it is down (it waits at most SLURM's MessageTimeout for
    an unreachable one). Without scontrol there is no telling: sbatch will say."""
    if shutil.which("scontrol") is None:
        return True
    try:
        return subprocess.run(["scontrol", "ping"], capture_output=True, timeout=timeout).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _ok(ok: Callable[[Any], bool], value: Any) -> bool:
    try:
        return bool(ok(value))
    except TypeError:  # a string where a number belongs
        return False


def is_joblib(config: Any) -> bool:
    return is_joblib_launcher(OmegaConf.select(config, "hydra.launcher", default=None))


def is_joblib_launcher(launcher: Any) -> bool:
    """Whether the `hydra.launcher` node is hydra-joblib-launcher's."""
    return launcher is not None and str(OmegaConf.select(launcher, "_target_", default="")).endswith("JoblibLauncher")


class WarmWorkers(Callback):
    """hydra/launcher=joblib: start loky's worker processes when the sweep starts, each importing what every job
    imports (warm_up), while the parent composes every job's config to validate the sweep (~0.2 s a job, one after
    the other). Without it the workers start only after that, and each first job pays ~3.5 s of imports on top.
    The workers are the ones the launcher's own joblib.Parallel then reuses: same options, same process-wide pool."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        if is_joblib(config):
            start_loky_workers(config.hydra.launcher, sweep_size(config))


def sweep_size(config: Any) -> Optional[int]:
    """How many jobs the basic sweeper's first batch holds (the product of the swept values), or None when that is
    not known here (another sweeper, or a sweep Hydra will refuse)."""
    size = sweep_jobs(config)
    if size is None:
        return None
    batch = OmegaConf.select(config, "hydra.sweeper.max_batch_size", default=None)
    return min(size, batch) if batch else size


def sweep_jobs(config: Any) -> Optional[int]:
    """How many jobs the basic sweeper launches in all (the product of the swept values), or None where not known."""
    counts = _swept_value_counts(config)
    return None if counts is None else math.prod(counts.values())


def empty_sweep(config: Any) -> Optional[str]:
    """The first swept override that expands to no value at all (range(4,2), range(0,0), a glob() no option of its
    group matches), which would make a sweep of no job; None otherwise, or where that is not known here (as
    sweep_size)."""
    counts = _swept_value_counts(config)
    return next((override for override, count in (counts or {}).items() if count == 0), None)


def oversized_sweep(config: Any) -> Optional[str]:
    """The sweep's overrides, where together they ask for more than MAX_SWEEP_JOBS jobs; None otherwise."""
    counts = _swept_value_counts(config)
    if counts and math.prod(counts.values()) > MAX_SWEEP_JOBS:
        return " ".join(counts)
    return None


def swept_keys(config: Any) -> Optional[set[str]]:
    """The keys the basic sweeper sweeps over more than one value (None where not known here, as sweep_size): every
    job of the sweep has its own combination of their values, and only of theirs."""
    counts = _swept_value_counts(config)
    if counts is None:
        return None
    return {_key(line) for line, count in counts.items() if count > 1}


def _key(override_line: str) -> str:
    """'+optimizer.lr=0.1,0.2' -> 'optimizer.lr'."""
    return override_line.split("=", 1)[0].lstrip("+~").split("@", 1)[0]


def _swept_value_counts(config: Any) -> Optional[dict[str, int]]:
    """Each sweep override of the basic sweeper, as written, with how many values it expands to (counted only up to
    MAX_SWEEP_JOBS + 1: never listed whole); None as sweep_size."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not str(OmegaConf.select(config, "hydra.sweeper._target_", default="")).endswith("BasicSweeper"):
        return None
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    arguments = [*(f"{key}={value}" for key, value in params.items()), *config.hydra.overrides.task]
    try:
        parser = OverridesParser.create(config_loader=_config_loader())  # a glob() lists its group's options
        return {override.input_line: _value_count(override)
                for override in parser.parse_overrides(arguments) if override.is_sweep_override()}
    except Exception:  # noqa: BLE001  Hydra's sweeper reports a bad sweep itself, in one line (cli/app.py)
        return None


def _value_count(override: Any) -> int:
    """How many values a sweep override expands to, up to MAX_SWEEP_JOBS + 1. An integer range is counted without
    being listed (range(1,99999999999) is 10^11 values; a shuffled one is listed whole by Hydra's own iterator)."""
    from hydra.core.override_parser.types import RangeSweep

    value = override.value()
    if isinstance(value, RangeSweep) and isinstance(value.range(), range):
        return min(len(value.range()), MAX_SWEEP_JOBS + 1)
    return sum(1 for _ in itertools.islice(override.sweep_string_iterator(), MAX_SWEEP_JOBS + 1))


def _config_loader() -> Any:
    """The running Hydra's config loader (None outside a Hydra run)."""
    from hydra.core.global_hydra import GlobalHydra

    hydra = GlobalHydra.instance()
    return hydra.config_loader() if hydra.is_initialized() else None


def start_loky_workers(launcher: Any, jobs: Optional[int] = None) -> Optional[threading.Thread]:
    """Run warm_up once on each of the launcher's workers that will get a job, in a background thread
    (joblib.Parallel waits for its results; the parent goes on composing). The options are the ones
    hydra-joblib-launcher hands to Parallel: loky reuses its pool only for a call with the same ones, and would
    otherwise start a second pool. None where the sweep has one worker: joblib then runs the jobs in this process,
    and warm_up would import torch here on a second thread while the first job imports it too (torch's import
    cycle between _inductor and _dynamo breaks when two threads enter it: every job failed)."""
    from joblib import Parallel, delayed, effective_n_jobs, parallel_config
    from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg

    options = {key: value for key, value in OmegaConf.to_container(launcher, resolve=True).items() if key != "_target_"}
    options["backend"] = "loky"  # hard-coded by the launcher too
    process_joblib_cfg(options)
    with parallel_config(backend="loky"):
        workers = effective_n_jobs(options.get("n_jobs", -1))
    workers = workers if jobs is None else min(workers, jobs)  # 16 cores, 4 jobs: 4 workers import torch, not 16
    if workers <= 1:
        return None

    def warm() -> None:
        try:
            Parallel(**options)(delayed(warm_up)() for _ in range(workers))
        except BaseException:  # noqa: BLE001  only a head start: the sweep's own Parallel reports a broken pool (and a
            pass               # sweep that stops early ends the pool under this call); never "Exception in thread"

    thread = threading.Thread(target=warm, name="gradexp-warm-workers", daemon=True)
    thread.start()
    return thread


def warm_up() -> None:
    """In a worker: the imports a job would pay in its first job. Only imports, nothing a run's results depend on.
    A stop signal from here on (the parent passes its own on, a terminal's Ctrl-C reaches the whole group) is
    recorded, not fatal: the worker's jobs then start none, each recorded interrupted (cli/app.py _task)."""
    catch_stop_signals()
    import gradexp.cli.app  # noqa: F401  what unpickling the task imports (Hydra, the config schema)
    from gradexp.cli.stack import import_training_stack

    # torch and the training stack; torch._dynamo, which torch.optim imports in every optimizer's first step (~1 s);
    # matplotlib, for the heatmap a run that logs layers draws when it ends. Without the collector's passes over them.
    import_training_stack("torch._dynamo", "gradexp.sinks.flow_images")


def catch_stop_signals() -> None:
    """In a loky worker: record the first stop signal (Interrupts.received, which every later job of the worker reads:
    each is recorded interrupted without starting) instead of dying of it. Between jobs too: each job's Interrupts
    puts this handler back when it ends."""
    from gradexp.training.interrupt import SIGNALS, Interrupts

    def record(signum: int, frame: Any) -> None:
        Interrupts.received = Interrupts.received or signum

    if threading.current_thread() is threading.main_thread():  # signals can only be caught there
        for sig in SIGNALS:
            signal.signal(sig, record)


class ReleaseWorkers(Callback):
    """hydra/launcher=joblib: when the sweep is over, end loky's idle worker processes instead of letting the exiting
    parent wait for each to shut down by itself. Every job has returned by then (its run folder closed, summary.json
    written), so nothing is lost; the wait it saves was ~3.8 s of a 22 s 8-job sweep on 2 cores, each worker
    tearing down an interpreter that holds torch (README, "Measured: joblib against the basic launcher")."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        if is_joblib(config):
            release_loky_workers()


def release_loky_workers() -> None:
    """End the process-wide pool joblib's loky backend reuses, if this process started one (run_app also calls
    this when a sweep stops early: a typo in its overrides must not wait for WarmWorkers' imports to finish)."""
    executor = _loky_executor()
    if executor is not None:
        # SIGKILL, then joined: no worker outlives the sweep. After a signal passed on, the workers' jobs are
        # stopping (checkpoint, summary.json) and the jobs still queued end at once: they are waited for
        executor.shutdown(wait=True, kill_workers=not _signalled)


def signal_loky_workers(signum: int) -> None:
    """Send `signum` to the worker processes of joblib's loky pool, if this process started one: the jobs of a joblib
    sweep run there, each under its own Interrupts, and stop after their step as a run does (status interrupted,
    a checkpoint to resume from). Without it a SIGTERM to `gradexp run -m` reached the parent alone: the jobs
    trained on, and outlived it (found by an adversarial test)."""
    global _signalled
    executor = _loky_executor()
    _signalled = _signalled or executor is not None
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        try:
            os.kill(process.pid, signum)
        except (ProcessLookupError, AttributeError, TypeError):  # gone already
            pass


slurm_sweep: Optional[str] = None  # the sweep folder of a SLURM sweep this process submits (FolderGuard sets it)


def signal_jobs(signum: int) -> None:
    """Pass a signal the parent caught on to the jobs of its sweep: joblib's workers, or a SLURM sweep's jobs."""
    signal_loky_workers(signum)
    if slurm_sweep is not None:
        signal_slurm_jobs(slurm_sweep, signum)


def signal_slurm_jobs(sweep_dir: str, signum: int) -> None:
    """A SLURM sweep's parent waits on jobs that run on the cluster: Ctrl-C or SIGTERM to it left them training, and
    the parent waiting on them (found by a new user). Its running jobs get the signal (each stops after its step:
    interrupted, a checkpoint), its pending ones are cancelled; re-running the sweep's command continues them all."""
    try:  # -r: one line per array task (a pending array reads 77_[2-3%4] otherwise, which scancel does not take)
        listed = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T %o"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return
    ours = [line.split() for line in listed.stdout.splitlines() if len(line.split()) >= 3
            and os.path.join(sweep_dir, ".submitit") in line]
    running = [job for job, state, *_ in ours if state in ("RUNNING", "COMPLETING", "CONFIGURING")]
    pending = [job for job, state, *_ in ours if state == "PENDING"]
    name = signal.Signals(signum).name.removeprefix("SIG")
    for command in ([["scancel", f"--signal={name}", *running]] if running else []) + \
                   ([["scancel", *pending]] if pending else []):
        try:
            subprocess.run(command, capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass


def _loky_executor() -> Any:
    """The process-wide pool joblib's loky backend reuses, if this process started one (None otherwise; joblib is
    not imported for the asking)."""
    return getattr(sys.modules.get("joblib.externals.loky.reusable_executor"), "_executor", None)
