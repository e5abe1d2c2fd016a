"""One experiment from a composed config: validate, build, train, and leave the run folder complete.
Tests call `run_experiment` directly with a config from Hydra's compose API."""
from __future__ import annotations

import os
from typing import Any, Optional

import torch
from rich.console import Console

from gradexp import build
from gradexp.advice import Factors
from gradexp.config import validate
from gradexp.diagnose import diagnose
from gradexp.probes.act_grads import hidden_layers
from gradexp.probes.base import Instruments
from gradexp.sinks.summary import SummarySink
from gradexp.sinks.tb_views import TensorBoardViews, run_hparams
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
    tensorboard = TensorBoardSink(run_dir)
    summary = SummarySink(run_dir, overrides, layer_names)
    sinks = [
        TensorBoardViews(tensorboard.writer, run_hparams(cfg), layer_names),  # before tensorboard: it uses its writer
        tensorboard,
        summary,
        TerminalSink(cfg.train.steps, run_dir, console=console),
    ]
    run = Run(
        model=model, task=task, batches=build.batches(cfg, task),
        optimizer=(opt := build.optimizer(cfg, model.parameters())), scheduler=build.scheduler(cfg, opt),
        clip=(clip := build.clip(cfg)), instruments=Instruments(build.probes(cfg, clip), model), sinks=sinks,
    )
    outcome = Outcome()
    try:
        outcome = train(run, build.settings(cfg))
    except Exception as err:  # a bug or OOM is recorded in the run folder, then re-raised for Hydra to report
        outcome.status, outcome.error = "failed", f"{type(err).__name__}: {err}"
        raise
    finally:
        outcome.perf["torch_threads"] = torch.get_num_threads()  # shows how a parallel launcher divided the CPUs
        # decide from what the summary holds, so summary.json, TensorBoard and the terminal show one verdict
        outcome.verdict = diagnose(summary.build(outcome), Factors.from_cfg(cfg), cfg.diagnose)
        for sink in sinks:
            sink.close(outcome)
    return outcome
