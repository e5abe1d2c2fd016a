"""The `gradexp run` Hydra application: the only @hydra.main. It composes the config, then hands the
run over to `gradexp.training.run.run_experiment`, which tests call directly with a composed config."""
from __future__ import annotations

import os
import shutil
import sys
import traceback

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from gradexp.config.schema import ConfigError, register_schema

EXIT_BAD_INPUT = 2
HYDRA_OWN = {".hydra", "gradexp.log"}  # what Hydra writes into a run folder before the task starts

register_schema()
_task_started = False  # distinguishes Hydra's composition errors (bad input) from failures inside a run


class JobFailed(Exception):
    """A sweep job's bad value; the sweep runs the other jobs, then reports it as one line and exits 1."""


@hydra.main(version_base="1.3", config_path="pkg://gradexp.configs", config_name="config")
def _task(cfg: DictConfig) -> None:
    global _task_started
    _task_started = True
    from gradexp.training.run import run_experiment
    from gradexp.training.interrupt import Interrupts
    from gradexp.training.threads import configure_threads
    from gradexp.cli.presets import refuse_unswept
    from gradexp.training.resume import PREFIX

    hydra_cfg = HydraConfig.get()
    configure_threads(hydra_cfg.launcher)  # parallel launchers: divide the CPUs among the jobs
    run_dir = hydra_cfg.runtime.output_dir
    overrides = [o for o in hydra_cfg.overrides.task if not o.startswith(PREFIX)]  # the run's own, as first started
    try:
        refuse_unswept(hydra_cfg, overrides, resuming=cfg.resume is not None)
        with Interrupts() as interrupts:
            outcome = run_experiment(cfg, run_dir=run_dir, overrides=overrides, stop=interrupts)
    except ConfigError as err:
        print(f"gradexp: {err}", file=sys.stderr)
        if hydra_cfg.mode == RunMode.RUN:
            _remove_if_empty(run_dir, resuming=cfg.resume is not None)
            sys.exit(EXIT_BAD_INPUT)
        _record_failure(run_dir, overrides, err)
        raise JobFailed(f"gradexp: a sweep job failed: {err} (the other jobs ran; see each job's summary.json)") from None
    except Exception as err:  # a bug or OOM, also while building: recorded, then Hydra reports it (the sweep goes on)
        _record_failure(run_dir, overrides, err)
        raise
    if outcome.status == "interrupted":
        sys.exit(interrupts.exit_code)  # also stops a sweep: SystemExit is not a job failure Hydra would swallow


def _remove_if_empty(run_dir: str, resuming: bool) -> None:
    """A run refused for a bad value leaves no folder behind (only Hydra's own record was written)."""
    if resuming or not os.path.isdir(run_dir) or not set(os.listdir(run_dir)) <= HYDRA_OWN:
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    try:
        os.rmdir(os.path.dirname(run_dir))  # the date folder, if this was its only run
    except OSError:
        pass


def _record_failure(run_dir: str, overrides: list[str], err: Exception) -> None:
    """The failed job keeps its folder, with summary.json saying status 'failed' and why (unless the run wrote one)."""
    from gradexp.sinks.summary import SummarySink
    from gradexp.outcome import Outcome

    if not os.path.exists(os.path.join(run_dir, "summary.json")):
        SummarySink(run_dir, overrides, []).close(Outcome(status="failed", error=f"{type(err).__name__}: {err}"))


def run_app() -> int:
    from gradexp.cli.presets import normalise
    from gradexp.training.resume import hydra_args

    try:
        sys.argv = [sys.argv[0], *normalise(hydra_args(sys.argv[1:]))]
    except ConfigError as err:
        print(f"gradexp: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    user_wants_traces = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing; gradexp reports below
    try:
        _task()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
        # Hydra exits 1 after printing an error it handled itself (e.g. a bad --cfg argument)
        return EXIT_BAD_INPUT if code == 1 and not _task_started else code
    except Exception as err:
        return _report(err, user_wants_traces)
    return 0


def _report(err: Exception, full: bool) -> int:
    """Bad input (Hydra composition, override syntax) and a sweep job's bad value: one line. A bug: its traceback."""
    from gradexp.cli.errors import BAD_INPUT, one_line

    if isinstance(err, JobFailed) and not full:
        print(err, file=sys.stderr)
        return 1
    if isinstance(err, BAD_INPUT) and not _task_started and not full:
        print(f"gradexp: {one_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    traceback.print_exception(err)
    return 1
