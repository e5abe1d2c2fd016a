"""The training loop: plain PyTorch, no Hydra. It knows the phases of a step, not which probes exist.

Steps are numbered from 0; step s is the s-th optimizer update, so step 0's gradients are those of the
initialised network. Logging steps are 0, every `log_every`-th step and the last one."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

import torch
from torch import Tensor, nn

from gradexp.clip import ClipPolicy
from gradexp.data import Batches, Task
from gradexp.probes.base import Instruments


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


@dataclass
class Outcome:
    status: str = "running"          # completed | diverged | interrupted | failed
    steps: int = 0                   # optimizer updates done
    nonfinite: Optional[dict] = None
    error: Optional[str] = None
    perf: dict = field(default_factory=dict)


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


def train_step(run: Run, settings: Settings, logging: bool) -> dict[str, Tensor]:
    """One update. Returns the data loss (and, on logging steps, train metrics) as device tensors: no host sync."""
    x, y = run.batches.next()
    with run.instruments.watch() if logging else contextlib.nullcontext():
        output = run.model(x)
        loss = run.task.loss(output, y)
        penalty = regularization(run.model, settings)
        run.optimizer.zero_grad(set_to_none=True)
        (loss if penalty is None else loss + penalty).backward()
    if logging:
        run.instruments.after_backward()
    clip_norm = run.clip.apply([p for p in run.model.parameters() if p.grad is not None])
    if logging:
        run.instruments.after_clip(clip_norm)
    run.optimizer.step()
    if logging:
        run.instruments.after_step()
    if run.scheduler is not None:
        run.scheduler.step()
    scalars = {"loss/train": loss.detach()}
    if logging:
        metrics = run.task.metrics(output.detach(), y)
        scalars.update({f"{k}/train": v for k, v in metrics.items()})
        scalars["lr"] = torch.tensor(run.optimizer.param_groups[0]["lr"])
    return scalars


@torch.no_grad()
def evaluate(run: Run) -> dict[str, Tensor]:
    """loss/val and metrics on the whole validation split, in eval mode (batchnorm uses running stats)."""
    run.model.train(False)
    try:
        output = run.model(run.task.x_val)
        scalars = {"loss/val": run.task.loss(output, run.task.y_val)}
        scalars.update({f"{k}/val": v for k, v in run.task.metrics(output, run.task.y_val).items()})
    finally:
        run.model.train(True)
    return scalars


def train(run: Run, settings: Settings, start_step: int = 0) -> Outcome:
    """Run the loop to settings.steps. A non-finite loss ends it with status 'diverged' (a result, not a crash)."""
    outcome = Outcome(steps=start_step)
    nonfinite = torch.zeros((), dtype=torch.bool, device=run.task.x_train.device)  # set on device: no per-step sync
    started = time.perf_counter()
    try:
        for step in range(start_step, settings.steps):
            logging = is_logging_step(step, settings)
            scalars = train_step(run, settings, logging)
            nonfinite |= ~torch.isfinite(scalars["loss/train"])
            outcome.steps = step + 1
            evaluating = (step + 1) % settings.eval_every == 0 or step == settings.steps - 1
            if evaluating:
                scalars.update(evaluate(run))
            if logging or evaluating:
                values = run.instruments.collect(scalars if logging else evaluate_only(scalars))
                for sink in run.sinks:
                    sink.log(step, values)
                if bool(nonfinite):
                    outcome.status = "diverged"
                    outcome.nonfinite = {"step": step, "tensor": "loss/train"}
                    break
            if run.after_update is not None and run.after_update(outcome.steps) and outcome.steps < settings.steps:
                outcome.status = "interrupted"
                break
        else:
            outcome.status = "completed"
    except KeyboardInterrupt:
        outcome.status = "interrupted"
    elapsed = time.perf_counter() - started
    done = outcome.steps - start_step
    outcome.perf = {"steps_per_s": done / elapsed if elapsed > 0 else 0.0, "wall_s": elapsed}
    return outcome


def evaluate_only(scalars: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v for k, v in scalars.items() if k.endswith("/val")}
