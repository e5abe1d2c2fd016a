"""One experiment from a composed config: validate, build, train, and leave the run folder complete.
Tests call `run_experiment` directly with a config from Hydra's compose API."""
from __future__ import annotations

import os
from typing import Any, Optional

from rich.console import Console

from gradexp import build
from gradexp.config import validate
from gradexp.probes.act_grads import hidden_layers
from gradexp.probes.base import Instruments
from gradexp.sinks import theory as theory_sink
from gradexp.sinks.summary import SummarySink
from gradexp.sinks.tensorboard import TensorBoardSink
from gradexp.sinks.terminal import TerminalSink
from gradexp.train import Outcome, Run, train


def run_experiment(cfg: Any, run_dir: str, overrides: list[str], console: Optional[Console] = None) -> Outcome:
    validate(cfg)  # raises ConfigError before anything is written
    os.makedirs(run_dir, exist_ok=True)
    dev = build.device(cfg)
    task = build.task(cfg, dev)
    model = build.model(cfg, task, dev)
    layer_names = [name for name, _ in hidden_layers(model)]
    sinks = [
        TensorBoardSink(run_dir),
        SummarySink(run_dir, overrides, layer_names),
        TerminalSink(cfg.train.steps, run_dir, console=console),
    ]
    sinks += theory_sink.attach(cfg, task, sinks)  # mean-field baseline beside act_grad_norm (mlp only)
    run = Run(
        model=model, task=task, batches=build.batches(cfg, task),
        optimizer=(opt := build.optimizer(cfg, model.parameters())), scheduler=build.scheduler(cfg, opt),
        clip=build.clip(cfg), instruments=Instruments(build.probes(cfg), model), sinks=sinks,
    )
    outcome = Outcome()
    try:
        outcome = train(run, build.settings(cfg))
    except Exception as err:  # a bug or OOM is recorded in the run folder, then re-raised for Hydra to report
        outcome.status, outcome.error = "failed", f"{type(err).__name__}: {err}"
        raise
    finally:
        for sink in sinks:
            sink.close(outcome)
    return outcome
