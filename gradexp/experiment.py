"""One experiment from a composed config: validate, build, train, and leave the run folder complete.
Tests call `run_experiment` directly with a config from Hydra's compose API."""
from __future__ import annotations

import os
from typing import Any, Optional

import torch
from rich.console import Console

from gradexp import build, resume
from gradexp.advice import Factors
from gradexp.checkpoint import Checkpointer
from gradexp.config import validate
from gradexp.diagnose import diagnose
from gradexp.probes.act_grads import hidden_layers
from gradexp.probes.base import Instruments
from gradexp.reproducible import use_deterministic
from gradexp.sinks import theory as theory_sink
from gradexp.sinks.summary import SummarySink
from gradexp.sinks.tb_views import TensorBoardViews, run_hparams
from gradexp.sinks.tensorboard import TensorBoardSink
from gradexp.sinks.terminal import TerminalSink
from gradexp.train import Outcome, Run, train


class _NoStop:
    requested = False


def run_experiment(cfg: Any, run_dir: str, overrides: list[str], console: Optional[Console] = None,
                   stop: Any = _NoStop()) -> Outcome:
    """`stop.requested` turning true (gradexp.interrupt.Interrupts) ends the run after the current step,
    with a checkpoint and status 'interrupted'."""
    validate(cfg)  # raises ConfigError before anything is written
    state = resume.prepare(cfg, run_dir)  # refuses a folder holding a run; the checkpoint for resume=
    dev = build.device(cfg)
    task = build.task(cfg, dev)  # data that cannot be had (no network, no such folder) is refused before any write
    os.makedirs(run_dir, exist_ok=True)
    use_deterministic(cfg.train.deterministic)
    model = build.model(cfg, task, dev)
    layer_names = [name for name, _ in hidden_layers(model)]
    tensorboard = TensorBoardSink(run_dir, purge_step=None if state is None else state["step"])
    summary = SummarySink(run_dir, overrides, layer_names)
    sinks = [
        TensorBoardViews(tensorboard.writer, run_hparams(cfg, overrides), layer_names),  # before tensorboard (writer)
        tensorboard,
        summary,
        TerminalSink(cfg.train.steps, run_dir, console=console),
    ]
    sinks += theory_sink.attach(cfg, task, sinks)  # mean-field baseline beside act_grad_norm (mlp only)
    run = Run(
        model=model, task=task, batches=build.batches(cfg, task),
        optimizer=(opt := build.optimizer(cfg, model.parameters())), scheduler=build.scheduler(cfg, opt),
        clip=(clip := build.clip(cfg)), instruments=Instruments(build.probes(cfg, clip), model), sinks=sinks,
    )
    start = resume.restore(run, summary, state)
    checkpoints = Checkpointer(run_dir, run, cfg.train.checkpoint_every, summary.state_dict)
    run.after_update = lambda steps: checkpoints.maybe_save(steps) or stop.requested
    outcome = Outcome(steps=start)
    try:
        outcome = train(run, build.settings(cfg), start_step=start)
        if outcome.status == "interrupted" and stop.requested:  # stopped between steps: a consistent state
            checkpoints.save(outcome.steps)
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
