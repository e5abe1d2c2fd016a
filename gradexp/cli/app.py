"""The `gradexp run` Hydra application: the only @hydra.main. It composes the config, then hands the
run over to `gradexp.training.run.run_experiment`, which tests call directly with a composed config."""
from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from typing import Any, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gradexp.cli import jobs
from gradexp.cli import folders
from gradexp.cli import launchers
from gradexp.cli.argv import composition_options
from gradexp.cli.environ import environment_variable
from gradexp.config.schema import (CUSTOM, ConfigError, check_overrides, first_line, model_family, register_schema,
                                   validate)
from gradexp.outcome import WriteFailed
from gradexp.sinks.summary import read_summary
from gradexp.training.interrupt import Interrupts

EXIT_BAD_INPUT = 2

register_schema()
_interrupts = Interrupts()  # replaced by the one run_app installs
# the process inside run_app. Not a flag: submitit and joblib pickle the task by value, its globals included, so a
# worker process would see the parent's flag set; a worker's pid differs from the one recorded here
_app_pid: Optional[int] = None
_task_started = False  # distinguishes Hydra's composition errors (bad input) from failures inside a run


class _Stopped(BaseException):
    """A joblib worker's job that a signal stopped: it ends by returning (see _end_interrupted). A BaseException, so
    that no `except Exception` on the way records it as a failure."""


class JobFailed(Exception):
    """A sweep job's bad value; the sweep runs the other jobs, then reports it as one line and exits 1."""


@hydra.main(version_base="1.3", config_path="pkg://gradexp.configs", config_name="config")
def _task(cfg: DictConfig) -> Optional[float]:
    """One run or sweep job; a sweep job returns its objective (objective.metric) for the sweeper."""
    global _task_started
    _task_started = True
    if _app_pid == os.getpid():  # `gradexp run` itself: its Interrupts has been catching signals since start-up
        return _job(cfg, _interrupts)
    with Interrupts() as interrupts:  # a launcher's worker process (submitit, joblib): no run_app around it
        # a joblib worker stopped during an earlier job starts none after it: the job is recorded as interrupted
        interrupts.signum = Interrupts.received
        try:
            return _job(cfg, interrupts)
        except _Stopped:
            return None


def _job(cfg: DictConfig, interrupts: Interrupts) -> Optional[float]:
    from gradexp.training.exclusive import FolderInUse, sole_writer
    from gradexp.training.threads import configure_threads

    hydra_cfg = HydraConfig.get()
    configure_threads(hydra_cfg.launcher)  # parallel launchers: divide the CPUs among the jobs
    run_dir = hydra_cfg.runtime.output_dir
    try:
        with sole_writer(run_dir):  # before the job looks at its folder: a requeue while the run still writes there
            return _sole_job(cfg, interrupts, hydra_cfg, run_dir)
    except FolderInUse as err:  # another process's run: nothing of it is moved, undone or recorded as failed
        print(f"gradexp: {err}", file=sys.stderr)
        folders.created.forget()
        if hydra_cfg.mode == RunMode.RUN:
            sys.exit(EXIT_BAD_INPUT)
        raise JobFailed(f"gradexp: a sweep job was not run: {err}") from None


def _sole_job(cfg: DictConfig, interrupts: Interrupts, hydra_cfg: Any, run_dir: str) -> Optional[float]:
    """The job, its folder held by this process."""
    from gradexp.cli.presets import refuse_unswept
    from gradexp.training.resume import PREFIX

    # the run's own, as first started; unresolved, so an interpolation shows as typed, not as its value
    task_overrides = OmegaConf.to_container(hydra_cfg.overrides.task, resolve=False)
    overrides = [o for o in task_overrides if not o.startswith(PREFIX)]
    options = composition_options(hydra_cfg)
    _stop_if_requested(interrupts, run_dir, overrides, options)  # a signal while Hydra started up
    if hydra_cfg.mode == RunMode.MULTIRUN:  # a re-run sweep or a requeued job: continue what the folder holds
        action = jobs.decide(run_dir)
        if action == jobs.SKIP:
            print(f"gradexp: {run_dir} is finished; skipped", file=sys.stderr)
            return _objective(cfg, run_dir)
        if action == jobs.RESUME:
            print(f"gradexp: {run_dir} continues from its checkpoint", file=sys.stderr)
            cfg.resume = run_dir
    try:
        refuse_unswept(hydra_cfg, overrides, resuming=cfg.resume is not None)
        check_overrides(overrides)
        if model_family(cfg) == CUSTOM:  # validate imports the user's class, and torch with it: the stack first
            _import_stack(interrupts, run_dir, overrides, options)
        validate(cfg)  # torch-free otherwise: a bad value is refused before the training stack's imports (~0.8 s)
        _import_stack(interrupts, run_dir, overrides, options)
        from gradexp.training.run import run_experiment

        outcome = run_experiment(cfg, run_dir=run_dir, overrides=overrides, stop=interrupts, options=options,
                                 sweep=hydra_cfg.mode == RunMode.MULTIRUN)
    except ConfigError as err:
        print(f"gradexp: {err}", file=sys.stderr)
        if hydra_cfg.mode == RunMode.RUN:
            folders.undo()  # only what this invocation created; a folder the user had stays
            sys.exit(EXIT_BAD_INPUT)
        _record_failure(run_dir, overrides, err)
        raise JobFailed(f"gradexp: a sweep job failed: {err} (the other jobs ran; see each job's summary.json)") from None
    except WriteFailed as err:  # disk full: the run ended 'failed' in one line, the last checkpoint kept
        print(f"gradexp: the run failed: {err} (the last checkpoint is kept; resume={run_dir} once it can write)",
              file=sys.stderr)
        if hydra_cfg.mode == RunMode.RUN:
            sys.exit(1)
        raise JobFailed(f"gradexp: a sweep job failed: {err} (the other jobs ran; see each job's summary.json)") from None
    except Exception as err:  # a bug or OOM, also while building: recorded, then Hydra reports it (the sweep goes on)
        _record_failure(run_dir, overrides, err)
        raise
    if outcome.status == "interrupted":
        interrupts.hand_over()  # submitit's timeout signal: its own handler requeues the job, which then resumes
        _end_interrupted(interrupts)
    return _objective(cfg, run_dir) if hydra_cfg.mode == RunMode.MULTIRUN else None


def _end_interrupted(interrupts: Interrupts) -> None:
    """An interrupted run or job exits with the signal's status, which also stops a sweep (SystemExit is not a job
    failure Hydra would swallow). A joblib worker's job returns instead (_Stopped): joblib answers a job's exception
    by killing every worker, and with them the other jobs still writing their checkpoint and summary.json (found by an
    adversarial test). `gradexp run`, which caught the signal and passed it on, then exits with its status."""
    if _app_pid != os.getpid() and launchers.is_joblib_launcher(HydraConfig.get().launcher):
        raise _Stopped
    sys.exit(interrupts.exit_code)


def _stop_if_requested(interrupts: Interrupts, run_dir: str, overrides: list[str], options: list[str]) -> None:
    """A signal before the run started: the folder exists, so it says what happened (status interrupted, 0 steps),
    and the user is told where it is and how to continue, as at the end of any interrupted run."""
    if interrupts.requested:
        from gradexp.sinks.terminal import closing_lines

        _record_outcome(run_dir, overrides, "interrupted")
        print("interrupted before the first step", file=sys.stderr)
        for line in closing_lines("interrupted", run_dir, options, overrides,
                                  sweep=HydraConfig.get().mode == RunMode.MULTIRUN):
            print(line, file=sys.stderr)
        _end_interrupted(interrupts)


def _import_stack(interrupts: Interrupts, run_dir: str, overrides: list[str], options: list[str]) -> None:
    """The training stack (~0.8 s, most of start-up), then a stop a signal asked for meanwhile."""
    from gradexp.cli.stack import import_training_stack

    import_training_stack(freeze=_owns_process())  # paused collector and frozen, where the process is ours
    _stop_if_requested(interrupts, run_dir, overrides, options)


def _owns_process() -> bool:
    """This process is gradexp's own: `gradexp run` itself (the console script), or a launcher's worker (joblib,
    submitit), which runs the task without run_app. Not a caller's process that called main(argv) or run_app."""
    from gradexp.cli import main as cli

    return cli.owns_process or _app_pid != os.getpid()


def _objective(cfg: DictConfig, run_dir: str) -> float:
    return jobs.objective(read_summary(run_dir), cfg.objective.metric, cfg.objective.direction)


def _record_failure(run_dir: str, overrides: list[str], err: Exception) -> None:
    """The failed job keeps its folder, with summary.json saying status 'failed' and why (unless the run wrote one)."""
    _record_outcome(run_dir, overrides, "failed", f"{type(err).__name__}: {err}")


def _record_outcome(run_dir: str, overrides: list[str], status: str, error: Optional[str] = None) -> None:
    """summary.json for a run that ended outside run_experiment's own bookkeeping (unless the run wrote one)."""
    from gradexp.sinks.summary import SummarySink
    from gradexp.outcome import Outcome

    if not os.path.exists(os.path.join(run_dir, "summary.json")):
        try:
            SummarySink(run_dir, overrides, []).close(Outcome(status=status, error=error))
        except OSError:  # the folder cannot be written (gone, full): the error reported says why
            pass


def run_app() -> int:
    from gradexp.cli.presets import normalise
    from gradexp.cli.argv import hydra_args
    from gradexp.cli import main as cli

    try:
        sys.argv = [sys.argv[0], *normalise(hydra_args(sys.argv[1:]))]
    except ConfigError as err:
        print(f"gradexp: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    # the Optuna sweeper imports alembic, whose plugin set-up logs 7 INFO lines through Hydra's root handler
    logging.getLogger("alembic").setLevel(logging.WARNING)
    global _interrupts, _app_pid
    # HYDRA_FULL_ERROR: Hydra re-raises instead of printing, and gradexp reports below (full traces where the user set
    # it). Interrupts from the first moment: a signal during start-up is a request the run honours once its folder
    # exists
    with environment_variable("HYDRA_FULL_ERROR", "1") as users, Interrupts() as _interrupts:
        _interrupts.on_signal = launchers.signal_jobs  # a joblib or SLURM sweep's jobs stop with it
        cli.run_catches_signals = True  # from here a signal is the run's request, no longer the command's stop
        _app_pid = os.getpid()
        try:
            code = _run_task(users == "1")
            if code == 0 and _interrupts.requested:  # a joblib sweep whose jobs stopped with the signal returned
                code = _interrupts.exit_code
        finally:
            _app_pid = None
            launchers.release_loky_workers()  # a joblib sweep that stopped early (ReleaseWorkers ends a finished one)
    try:
        if code == EXIT_BAD_INPUT:
            folders.undo()  # a refused run or sweep leaves nothing behind (not even a lone multirun.yaml)
    finally:
        folders.let_go()  # after undo: the folder stays this process's until its own files are gone
    return code


def _run_task(user_wants_traces: bool) -> int:
    try:
        _task()
    except folders.Refused as refusal:
        print(f"gradexp: {refusal}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
        # Hydra exits 1 after printing an error it handled itself (e.g. a bad --cfg argument)
        return EXIT_BAD_INPUT if code == 1 and not _task_started else code
    except Exception as err:
        return _report(err, user_wants_traces)
    return 0


def _is_submitit_failure(err: BaseException) -> bool:
    """submitit's UncompletedJobError/FailedJobError, and sbatch refusing the submission (by name: no submitit
    import on the common path)."""
    name, module = type(err).__name__, type(err).__module__
    return module.startswith("submitit") and name in ("UncompletedJobError", "FailedJobError", "FailedSubmissionError")


def _report(err: Exception, full: bool) -> int:
    """Bad input (Hydra composition, override syntax) and a sweep job's bad value: one line. A bug: its traceback."""
    from gradexp.cli.errors import BAD_INPUT, one_line

    if isinstance(err, BrokenPipeError):  # `gradexp run --help | head`: the reader went away, not bad input
        raise err
    if isinstance(err, JobFailed) and not full:
        print(err, file=sys.stderr)
        return 1
    if _is_submitit_failure(err) and _interrupts.requested and not full:  # its pending jobs, cancelled with it
        print(f"gradexp: the sweep stopped ({signal.Signals(_interrupts.signum).name}): its running SLURM jobs stopped "
              "after their step, its pending ones were cancelled; re-run the same command to continue it",
              file=sys.stderr)
        return _interrupts.exit_code
    if _is_submitit_failure(err) and first_line(err).startswith("sbatch: error") and not full:
        # SLURM refused the submission itself (found by a new user: gpus_per_node=1 on a cluster without GPUs read
        # "a SLURM job ended without a result ... re-run the same command", which can only fail the same way)
        print(f"gradexp: SLURM refused the sweep's jobs: {first_line(err)} (they were not submitted; change the "
              "hydra.launcher option it names, e.g. gpus_per_node on a cluster without GPUs, and run the sweep again)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    if _is_submitit_failure(err) and not full:  # scancel, OOM, a node lost: the parent waited on a job that died
        print(f"gradexp: a SLURM job ended without a result: {first_line(err)} (its log is in the sweep folder's "
              ".submitit/<job id>/; re-run the same command to continue the sweep)", file=sys.stderr)
        return 1
    if isinstance(err, BAD_INPUT) and not _task_started and not full:
        print(f"gradexp: {one_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    # before the task starts: a run folder Hydra cannot create, an override Hydra's parser rejects as a ValueError
    if isinstance(err, (ConfigError, OSError, ValueError)) and not _task_started and not full:
        print(f"gradexp: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    traceback.print_exception(err)
    return 1
