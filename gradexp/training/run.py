"""One experiment from a composed config: validate, build, train, and leave the run folder complete.
Tests call `run_experiment` directly with a config from Hydra's compose API."""
from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence

import torch
from rich.console import Console

from gradexp.training import factory as build

from gradexp.training import limits

from gradexp.training import resume
from gradexp.training.exclusive import sole_writer
from gradexp.analysis.advice import Factors
from gradexp.training.checkpoint import Checkpointer, fingerprint
from gradexp.config.schema import validate
from gradexp.analysis.diagnose import diagnose
from gradexp.training.denormals import flushing
from gradexp.training.threads import apply_explicit_threads, check_count
from gradexp.training.reproducible import use_deterministic
from gradexp.analysis import theory
from gradexp.sinks.theory import TheorySink
from gradexp.sinks.summary import SummarySink
from gradexp.sinks.tb_views import TensorBoardViews, run_hparams
from gradexp.sinks.tensorboard import TensorBoardSink
from gradexp.sinks.terminal import TerminalSink
from gradexp.outcome import Outcome, WriteFailed  # WriteFailed: importable from here too
from gradexp.training.loop import Run, train
from gradexp.probes.layers import Depths, depths_of


class _NoStop:
    requested = False


def run_experiment(cfg: Any, run_dir: str, overrides: Optional[list[str]] = None, console: Optional[Console] = None,
                   stop: Any = _NoStop(), options: Sequence[str] = (), sweep: bool = False) -> Outcome:
    """Train the composed config `cfg` (gradexp.compose) and leave `run_dir` as `gradexp run` does: TensorBoard
    events, summary.json, checkpoints. `overrides` are recorded as the run's own (the command line that made it).
    `stop.requested` turning true (gradexp.training.interrupt.Interrupts) ends the run after the current step,
    with a checkpoint and status 'interrupted'. Bad input raises ConfigError before anything is written. `options`:
    the Hydra options the run was started with (--config-dir X), repeated in the commands the terminal prints. `sweep`:
    the run is a job of a sweep (how to continue it is the sweep's command)."""
    overrides = list(overrides or [])
    validate(cfg)
    apply_explicit_threads(cfg.train.threads)  # before anything computes: results depend on the count
    check_count("data.workers", cfg.data.workers, "0: batches cut in the main process")
    dev = build.device(cfg)
    task = limits.task(cfg, dev)  # refuses a batch larger than the data and a model that cannot fit
    with sole_writer(run_dir):  # a second run into the same folder (two resumes at once) is refused
        state = resume.prepare(cfg, run_dir)  # refuses a folder holding a run; the checkpoint for resume=
        use_deterministic(cfg.train.deterministic)
        run = build.run(cfg, built_task=task)  # finds the layers: a model.watch matching nothing is refused here
        config = fingerprint(cfg)
        start = resume.restore(run, state, cfg.train.steps, config)  # another run's checkpoint: refused, nothing written
        os.makedirs(run_dir, exist_ok=True)
        depths = depths_of(run.model, run.layers)  # where the watched layers lie (model.watch may skip some)
        sinks, states = _sinks(cfg, run_dir, overrides, task, run, depths, state, console, options, sweep)
        run.sinks = sinks
        checkpoints = Checkpointer(run_dir, run, cfg.train.checkpoint_every, states, config)
        run.after_update = lambda steps: checkpoints.maybe_save(steps) or stop.requested
        with flushing(cfg.train.flush_denormal) as flushed:  # an explicit option: it zeroes what this tool measures
            return _train(cfg, run, depths, start, checkpoints, stop, flushed)


def _sinks(cfg: Any, run_dir: str, overrides: list[str], task: Any, run: Run, depths: Depths, state: Optional[dict],
           console: Optional[Console], options: Sequence[str] = (), sweep: bool = False
           ) -> tuple[list, Callable[[], dict]]:
    """The sinks in closing order, and what of theirs goes into a checkpoint (history behind end-of-run images)."""
    baseline = theory.baseline(cfg, task.x_train)  # mean-field prediction (plain MLPs); None elsewhere
    tensorboard = TensorBoardSink(run_dir, purge_step=None if state is None else state["step"])
    layer_names, at = [name for name, _ in run.layers], depths.per_layer
    summary = SummarySink(run_dir, overrides, layer_names, baseline, depths=at, constant_loss=task.constant_loss())
    hparams = {**run_hparams(cfg, overrides), "perf.torch_threads": torch.get_num_threads()}
    views = TensorBoardViews(tensorboard.writer, hparams, layer_names, at)  # one event writer for the run folder
    sinks = [views, tensorboard, summary,  # views before tensorboard, which closes the writer
             TerminalSink(cfg.train.steps, run_dir, console=console, overrides=overrides, options=options, sweep=sweep)]
    stateful = {"summary": summary, "views": views, "tensorboard": tensorboard}
    if baseline is not None:
        stateful["theory"] = TheorySink(baseline, tensorboard.writer)
        sinks.insert(0, stateful["theory"])
    resume.restore_sinks(stateful, state)

    def states() -> dict[str, Any]:
        return {name: sink.state_dict() for name, sink in stateful.items()}
    return sinks, states


def _train(cfg: Any, run: Run, depths: Depths, start: int, checkpoints: Checkpointer, stop: Any,
           flushed: bool = False) -> Outcome:
    outcome = Outcome(steps=start)  # train() advances it, so a run that fails mid-way reports its real steps
    failure: Optional[BaseException] = None
    try:
        train(run, build.settings(cfg), start_step=start, outcome=outcome)
        if outcome.status == "interrupted" and stop.requested:  # stopped between steps: a consistent state
            checkpoints.save(outcome.steps)
    except Exception as err:  # recorded in the run folder, then re-raised for Hydra to report
        failure = err
        outcome.status, outcome.error = "failed", _describe(err, checkpoints.path)
    finally:
        run.batches.close()  # DataLoader workers stop with the run, not whenever the garbage collector gets to them
    outcome.perf["torch_threads"] = torch.get_num_threads()  # shows how a parallel launcher divided the CPUs
    if flushed:  # the numbers below 1.2e-38 read 0 in this run (training/denormals.py)
        outcome.perf["flush_denormal"] = True
    summary = next(s for s in run.sinks if isinstance(s, SummarySink))
    # decide from what the summary holds, so summary.json, TensorBoard and the terminal show one verdict
    built = summary.build(outcome)
    # the layers the gradient crosses (model.watch may measure fewer)
    outcome.verdict = diagnose(built, Factors.from_cfg(cfg, watched=depths.model), cfg.diagnose)
    failure = _close(run.sinks, outcome, failure, checkpoints.path)
    if isinstance(failure, OSError):
        raise WriteFailed(outcome.error) from failure
    if failure is not None:
        raise failure
    return outcome


def _close(sinks: list, outcome: Outcome, failure: Optional[BaseException], near: str) -> Optional[BaseException]:
    """Close every sink even when one cannot write (disk full); the first write error becomes the run's error."""
    for sink in sinks:
        try:
            sink.close(outcome)
        except OSError as err:
            if failure is None:
                failure, outcome.status, outcome.error = err, "failed", _describe(err, near)
    return failure


def _describe(err: BaseException, near: str) -> str:
    """One line: the path that could not be written and why ('cannot write /r/x: No space left on device')."""
    if isinstance(err, OSError):
        path = err.filename or os.path.dirname(near)
        return f"cannot write {path}: {err.strerror or err}"
    return f"{type(err).__name__}: {err}"
