"""The `gradexp run` Hydra application: the only @hydra.main. It composes the config, then hands the
run over to `gradexp.training.run.run_experiment`, which tests call directly with a composed config."""
from __future__ import annotations

import os
import sys
import traceback
from typing import Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gradexp.cli import folders
from gradexp.config.schema import ConfigError, check_overrides, register_schema
from gradexp.training.interrupt import Interrupts

EXIT_BAD_INPUT = 2

register_schema()
_interrupts = Interrupts()  # replaced by the one run_app installs
_task_started = False  # distinguishes Hydra's composition errors (bad input) from failures inside a run


class JobFailed(Exception):
    """A sweep job's bad value; the sweep runs the other jobs, then reports it as one line and exits 1."""


@hydra.main(version_base="1.3", config_path="pkg://gradexp.configs", config_name="config")
def _task(cfg: DictConfig) -> None:
    global _task_started
    _task_started = True
    from gradexp.training.run import WriteFailed, run_experiment
    from gradexp.training.threads import configure_threads
    from gradexp.cli.presets import refuse_unswept
    from gradexp.training.resume import PREFIX

    hydra_cfg = HydraConfig.get()
    configure_threads(hydra_cfg.launcher)  # parallel launchers: divide the CPUs among the jobs
    run_dir = hydra_cfg.runtime.output_dir
    # the run's own, as first started; unresolved, so an interpolation shows as typed, not as its value
    task_overrides = OmegaConf.to_container(hydra_cfg.overrides.task, resolve=False)
    overrides = [o for o in task_overrides if not o.startswith(PREFIX)]
    interrupts = _interrupts
    if interrupts.requested:  # a signal while Hydra started up: the folder exists, so it says what happened
        _record_outcome(run_dir, overrides, "interrupted")
        sys.exit(interrupts.exit_code)
    try:
        refuse_unswept(hydra_cfg, overrides, resuming=cfg.resume is not None)
        check_overrides(overrides)
        outcome = run_experiment(cfg, run_dir=run_dir, overrides=overrides, stop=interrupts)
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
        sys.exit(interrupts.exit_code)  # also stops a sweep: SystemExit is not a job failure Hydra would swallow


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
    from gradexp.training.resume import hydra_args

    try:
        sys.argv = [sys.argv[0], *normalise(hydra_args(sys.argv[1:]))]
    except ConfigError as err:
        print(f"gradexp: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    user_wants_traces = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing; gradexp reports below
    global _interrupts
    # from the first moment: a signal during start-up is a request the run honours once its folder exists
    with Interrupts() as _interrupts:
        code = _run_task(user_wants_traces)
    if code == EXIT_BAD_INPUT:
        folders.undo()  # a refused run or sweep leaves nothing behind (not even a lone multirun.yaml)
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


def _report(err: Exception, full: bool) -> int:
    """Bad input (Hydra composition, override syntax) and a sweep job's bad value: one line. A bug: its traceback."""
    from gradexp.cli.errors import BAD_INPUT, one_line

    if isinstance(err, JobFailed) and not full:
        print(err, file=sys.stderr)
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
