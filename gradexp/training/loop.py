"""The training loop: plain PyTorch, no Hydra. It knows the phases of a step, not which probes exist.

Steps are numbered from 0; step s is the s-th optimizer update, so step 0's gradients are those of the
initialised network. Logging steps are 0, every `log_every`-th step and the last one."""
from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

import torch
from torch import Tensor, nn

from gradexp.outcome import Outcome
from gradexp.training.clip import ClipPolicy
from gradexp.data.tasks import Batches, Task
from gradexp.training.nonfinite import NonfiniteGuard
from gradexp.training.perf import PerfMeter
from gradexp.training.precision import Precision
from gradexp.probes.base import Instruments, named_parameters
from gradexp.sinks.writer import SinkWriter


class Sink(Protocol):
    def log(self, step: int, values: dict[str, float]) -> None: ...
    def close(self, outcome: "Outcome") -> None: ...


@dataclass
class Settings:
    steps: int
    eval_every: int
    log_every: int
    l1: float = 0.0
    l2: float = 0.0
    stop_on_nonfinite: bool = True


@dataclass
class Run:
    model: nn.Module
    task: Task
    batches: Batches
    optimizer: torch.optim.Optimizer
    scheduler: Optional[torch.optim.lr_scheduler.LRScheduler]
    clip: ClipPolicy
    instruments: Instruments
    sinks: list[Sink]
    # called after each update with the number of updates done (checkpoints); True asks the loop to stop
    after_update: Optional[Callable[[int], bool]] = None
    layers: list = field(default_factory=list)  # (name, module) the instruments watch (probes/layers.py)
    precision: Precision = field(default_factory=lambda: Precision("fp32", None, torch.device("cpu")))
    # train.compile: torch.compile of `model` (same parameters) for ordinary steps; logging steps, the fp32
    # reference and evaluation run `model` eagerly, so probe hooks never reach the compiled graph (no recompiles)
    compiled: Optional[nn.Module] = None
    # the sinks' writer thread while train() runs (sinks/writer.py); a checkpoint drains it before reading sink state
    writer: Optional[SinkWriter] = field(default=None, repr=False)

    def drain_sinks(self) -> None:
        """Everything logged so far is written (raises a sink's write error here, on the training thread)."""
        if self.writer is not None:
            self.writer.drain()

    @functools.cached_property
    def params(self) -> list[nn.Parameter]:
        """From the once-walked parameter list: a module-tree walk costs tens of microseconds, a visible share
        of a small model's step."""
        return [p for _, p in named_parameters(self.model)]


def is_logging_step(step: int, settings: Settings) -> bool:
    return step % settings.log_every == 0 or step == settings.steps - 1


def regularization(model: nn.Module, settings: Settings) -> Optional[Tensor]:
    """reg.l1 * sum|w| + reg.l2 * sum w^2 over weight matrices (biases and norm parameters excluded)."""
    if not (settings.l1 or settings.l2):
        return None
    weights = [p for p in model.parameters() if p.dim() > 1]
    penalty = 0.0
    if settings.l1:
        penalty = penalty + settings.l1 * sum(p.abs().sum() for p in weights)
    if settings.l2:
        penalty = penalty + settings.l2 * sum(p.pow(2).sum() for p in weights)
    return penalty


def _total_loss(run: Run, settings: Settings, loss: Tensor) -> Tensor:
    penalty = regularization(run.model, settings)
    return loss if penalty is None else loss + penalty


def train_step(run: Run, settings: Settings, logging: bool) -> dict[str, Tensor | float]:
    """One update. Returns the data loss (and, on logging steps, train metrics) as device tensors: no host sync."""
    if not logging and is_bare(run, settings):
        return bare_step(run)
    x, y = run.batches.next()
    if logging and run.precision.mixed:  # probes/underflow.py compares with this batch's fp32 gradient
        run.instruments.reference(lambda: _total_loss(run, settings, run.task.loss(run.model(run.task.inputs(x)), y)))
    net = run.model if logging or run.compiled is None else run.compiled
    with run.instruments.watch() if logging else contextlib.nullcontext():
        with run.precision.autocast():  # the forward pass only; backward follows the forward's dtypes
            output = net(run.task.inputs(x))
            loss = run.task.loss(output, y)
            total = _total_loss(run, settings, loss)
        run.optimizer.zero_grad(set_to_none=True)
        run.precision.backward(total)
    run.precision.unscale(run.optimizer)  # clipping and every instrument see the true gradient
    if logging:
        run.instruments.after_backward()
    clip_norm = run.clip.apply(run.params)
    if logging:
        run.instruments.after_clip(clip_norm)
        # the rate this update uses, read before the step: after it a scheduler has moved on to the next update's
        # (found by a user: a warmup's logged lr ran one update ahead). A host number: no tensor, no copy
        lr = float(run.optimizer.param_groups[0]["lr"])
    run.precision.step(run.optimizer)
    if logging:
        run.instruments.after_step()
    run.precision.end_step(run.optimizer)
    if run.scheduler is not None:
        run.scheduler.step()
    scalars = {"loss/train": loss.detach()}
    if logging:
        metrics = run.task.metrics(output.detach(), y)
        scalars.update({f"{k}/train": v for k, v in metrics.items()})
        scalars["lr"] = lr
    return scalars


def is_bare(run: Run, settings: Settings) -> bool:
    """Nothing stands between this run's backward and its optimizer step: fp32 with no loss scale, no clip policy,
    no weight penalty. Each wrapper train_step calls is then a no-op, and together they cost ~1% of a small model's
    step (scripts/bench_overhead.py, instruments off), so its ordinary steps take bare_step."""
    return (run.precision.scaler is None and not run.precision.mixed and run.clip.mode == "none"
            and not (settings.l1 or settings.l2))


def bare_step(run: Run) -> dict[str, Tensor]:
    """An ordinary step of a bare run: the hand-written loop itself, the same operations in the same order as
    train_step's (so the same numbers, bit for bit)."""
    x, y = run.batches.next()
    net = run.model if run.compiled is None else run.compiled
    loss = run.task.loss(net(run.task.inputs(x)), y)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    if run.scheduler is not None:
        run.scheduler.step()
    return {"loss/train": loss.detach()}


@torch.no_grad()
def evaluate(run: Run) -> dict[str, Tensor]:
    """loss/val and metrics on the whole validation split, in eval mode (batchnorm uses running stats)."""
    run.model.train(False)
    try:
        with run.precision.autocast():
            output = run.model(run.task.inputs(run.task.x_val))
            scalars = {"loss/val": run.task.loss(output, run.task.y_val)}
            scalars.update({f"{k}/val": v for k, v in run.task.metrics(output, run.task.y_val).items()})
    finally:
        run.model.train(True)
    return scalars


def train(run: Run, settings: Settings, start_step: int = 0, outcome: Optional[Outcome] = None) -> Outcome:
    """Run the loop to settings.steps. A non-finite loss or gradient is localised (nonfinite.py) and ends the
    run with status 'diverged' (a result, not a crash); with stop_on_nonfinite false training goes on.
    `outcome` (optional) is updated in place, so the caller knows the steps done even when an exception escapes."""
    outcome = Outcome(steps=start_step) if outcome is None else outcome
    guard = NonfiniteGuard(run, settings, start_step)  # per step: a list append, no device op, no sync
    meter = PerfMeter()
    run.writer = SinkWriter(run.sinks)  # sinks write on their own thread; drained at checkpoints and at the end
    try:
        _loop(run, settings, start_step, outcome, guard, meter)
        run.writer.close()  # everything written; a sink's write error is raised here
    except KeyboardInterrupt:
        outcome.status = "interrupted"
        run.writer.close()
    finally:
        if run.writer is not None and run.writer.thread is not None:  # failing already: stop it, keep that error
            run.writer.close(raise_error=False)
        run.writer = None
    outcome.perf = meter.summary(outcome.steps - start_step)
    return outcome


def _loop(run: Run, settings: Settings, start_step: int, outcome: Outcome, guard: NonfiniteGuard,
          meter: PerfMeter) -> None:
    clock, writer = time.perf_counter, run.writer
    for step in range(start_step, settings.steps):
        logging = is_logging_step(step, settings)
        t0 = clock()
        if logging:
            run.instruments.begin(step)
        scalars = train_step(run, settings, logging)
        meter.step(logging, clock() - t0)
        guard.observe(scalars["loss/train"])
        outcome.steps = step + 1
        evaluating = (step + 1) % settings.eval_every == 0 or step == settings.steps - 1
        if evaluating:
            scalars.update(evaluate(run))
        if logging or evaluating:
            t0 = clock()
            writer.log(step, run.instruments.collect(scalars if logging else evaluate_only(scalars), defer=True))
            found = guard.check(step, train_step)
            meter.instrumenting(clock() - t0)
            if found is not None:
                outcome.nonfinite = found
                if settings.stop_on_nonfinite:
                    break
        if run.after_update is not None and run.after_update(outcome.steps) and outcome.steps < settings.steps:
            outcome.status = "interrupted"
            return
    outcome.status = "completed" if outcome.nonfinite is None else "diverged"


def evaluate_only(scalars: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v for k, v in scalars.items() if k.endswith("/val")}
