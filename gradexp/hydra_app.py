"""The `gradexp run` Hydra application: the only @hydra.main. It composes the config, then hands the
run over to `gradexp.experiment.run_experiment`, which tests call directly with a composed config."""
from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from gradexp.config import ConfigError, register_schema

EXIT_BAD_INPUT = 2

register_schema()
_task_started = False  # distinguishes Hydra's composition errors (bad input) from failures inside a run


@hydra.main(version_base="1.3", config_path="pkg://gradexp.configs", config_name="config")
def _task(cfg: DictConfig) -> None:
    global _task_started
    _task_started = True
    from gradexp.experiment import run_experiment
    from gradexp.launch import configure_threads

    hydra_cfg = HydraConfig.get()
    configure_threads(hydra_cfg.launcher)  # parallel launchers: divide the CPUs among the jobs
    try:
        run_experiment(cfg, run_dir=hydra_cfg.runtime.output_dir, overrides=list(hydra_cfg.overrides.task))
    except ConfigError as err:
        print(f"gradexp: {err}", file=sys.stderr)
        if hydra_cfg.mode == RunMode.RUN:
            sys.exit(EXIT_BAD_INPUT)
        raise


def run_app() -> int:
    try:
        _task()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
        # Hydra exits 1 after printing a composition error (unknown option, wrong type, typo'd key)
        return EXIT_BAD_INPUT if code == 1 and not _task_started else code
    return 0
