"""The `gradexp run` Hydra application: the only @hydra.main. It composes the config, then hands the
run over to `gradexp.experiment.run_experiment`, which tests call directly with a composed config."""
from __future__ import annotations

import os
import shutil
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig

from gradexp.config import ConfigError, register_schema

EXIT_BAD_INPUT = 2
HYDRA_OWN = {".hydra", "gradexp.log"}  # what Hydra writes into a run folder before the task starts

register_schema()
_task_started = False  # distinguishes Hydra's composition errors (bad input) from failures inside a run


class JobFailed(CompactHydraException):
    """A sweep job's bad value, reported by Hydra at the end of the sweep as one line (no traceback)."""


@hydra.main(version_base="1.3", config_path="pkg://gradexp.configs", config_name="config")
def _task(cfg: DictConfig) -> None:
    global _task_started
    _task_started = True
    from gradexp.experiment import run_experiment
    from gradexp.interrupt import Interrupts
    from gradexp.resume import PREFIX

    hydra_cfg = HydraConfig.get()
    run_dir, overrides = hydra_cfg.runtime.output_dir, list(hydra_cfg.overrides.task)
    try:
        with Interrupts() as interrupts:
            outcome = run_experiment(cfg, run_dir=run_dir, overrides=[o for o in overrides if not o.startswith(PREFIX)],
                                     stop=interrupts)
    except ConfigError as err:
        print(f"gradexp: {err}", file=sys.stderr)
        if hydra_cfg.mode == RunMode.RUN:
            _remove_if_empty(run_dir, resuming=cfg.resume is not None)
            sys.exit(EXIT_BAD_INPUT)
        _record_failure(run_dir, overrides, err)
        raise JobFailed(f"gradexp: a sweep job failed: {err} (the other jobs ran; see each job's summary.json)") from None
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
    """In a sweep the bad job keeps its folder, with summary.json saying status 'failed' and why."""
    from gradexp.sinks.summary import SummarySink
    from gradexp.train import Outcome

    if not os.path.exists(os.path.join(run_dir, "summary.json")):
        SummarySink(run_dir, overrides, []).close(Outcome(status="failed", error=f"ConfigError: {err}"))


def run_app() -> int:
    from gradexp.resume import hydra_args

    try:
        sys.argv = [sys.argv[0], *hydra_args(sys.argv[1:])]
    except ConfigError as err:
        print(f"gradexp: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        _task()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
        # Hydra exits 1 after printing a composition error (unknown option, wrong type, typo'd key)
        return EXIT_BAD_INPUT if code == 1 and not _task_started else code
    return 0
