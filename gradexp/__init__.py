"""gradexp: a lab for vanishing and exploding gradients.

The public Python API (everything else is internal and may move):

    cfg = gradexp.compose(["model=rnn", "clip=norm_1.0"])   # the same config `gradexp run ...` composes
    outcome = gradexp.run_experiment(cfg, run_dir="runs/a")  # train it; the run folder as the CLI leaves it
    run = gradexp.build_run(cfg)                              # or only the objects (model, optimizer, probes...)
    gradexp.train(run, gradexp.settings(cfg))                 # ...and train them in your own process
    summary = gradexp.load_summary("runs/a")                  # a run's summary.json, checked and upgraded
    runs = gradexp.find_runs("multirun/")                     # every run under a folder (what `gradexp report` reads)
    monitor = gradexp.Monitor(model, run_dir="runs/mine")     # the instruments on your own model and loop (monitor.py)

Attributes load on first use, so `import gradexp` (and `gradexp --help`) does not import torch.
"""
from __future__ import annotations

import importlib
from typing import Any

# public name -> (module, attribute)
_EXPORTS = {
    "compose": ("gradexp.config.schema", "compose"),
    "ConfigError": ("gradexp.config.schema", "ConfigError"),
    "run_experiment": ("gradexp.training.run", "run_experiment"),
    "build_run": ("gradexp.training.factory", "run"),
    "settings": ("gradexp.training.factory", "settings"),
    "train": ("gradexp.training.loop", "train"),
    "Run": ("gradexp.training.loop", "Run"),
    "Outcome": ("gradexp.outcome", "Outcome"),
    "Monitor": ("gradexp.monitor", "Monitor"),
    "load_summary": ("gradexp.report.runs", "load_summary"),
    "find_runs": ("gradexp.report.runs", "find_runs"),
    "SCHEMA_VERSION": ("gradexp.sinks.summary", "SCHEMA_VERSION"),
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name == "__version__":  # the installed distribution's, as `gradexp --version` prints it
        from gradexp.cli.main import version

        return version()
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gradexp' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
