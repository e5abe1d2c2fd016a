"""A PyTorch Lightning callback over gradexp.Monitor (`pip install 'gradexp[lightning]'`):

    from gradexp.integrations.lightning import GradexpCallback
    trainer = lightning.Trainer(callbacks=[GradexpCallback(run_dir="runs/lit")], gradient_clip_val=1.0)
    trainer.fit(model, loader)           # runs/lit: TensorBoard tags, summary.json, verdict; `gradexp report runs/`

How Lightning's hooks map onto the Monitor's step (one optimizer update):
- the step opens at the first micro-batch's on_train_batch_start and closes at the on_train_batch_end of the batch
  whose optimizer step ran (trainer.global_step moved), so gradient accumulation is one step, as in Lightning;
- the gradients are read before clipping at on_before_optimizer_step, which Lightning calls after backward and
  after unscaling AMP gradients, before it clips;
- Lightning's own clipping (Trainer(gradient_clip_val=..., gradient_clip_algorithm=...)) is applied by this callback
  instead, with the same torch call on the same parameters (the optimizer's), so that the clip telemetry sees the
  pre-clip norm with no second norm pass; the Trainer's setting is handed back when the fit ends;
- a step a GradScaler skips (fp16 with inf/NaN gradients) never reaches the optimizer: no update ratio, and amp/skipped_steps counts it;
- loss/train is the update's loss: the sum of Lightning's per-batch losses, which it divides by the accumulation;
- an exception (on_exception, KeyboardInterrupt included) drops the open step, removes the hooks and writes a whole
  summary.json with status failed;
- manual optimization: several optimizers stepping on one backward are one update; an optimizer stepping on the
  gradients of a later backward in the same batch (a GAN's D step, then its G step) is refused at the first logging
  step, as the Monitor refuses it: one Monitor per network measures alternating updates."""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import lightning.pytorch as pl
from torch import Tensor

from gradexp.monitor import DEFAULT_PROBES, Monitor, check_options


class GradexpCallback(pl.Callback):
    """run_dir, every, watch, probes, activation, sinks: as gradexp.Monitor's (the run folder defaults to
    runs/monitor-<time> under the current directory). The Monitor is built when the fit starts: `.monitor`."""

    def __init__(self, run_dir: Optional[str] = None, every: int = 25, watch: Sequence[str] = (),
                 probes: Sequence[str] = DEFAULT_PROBES, activation: Optional[str] = None, sinks: Sequence = ()):
        check_options(every, probes, activation)  # refused here, not when the fit starts (an adversarial test)
        self.options = dict(run_dir=run_dir, every=every, watch=watch, probes=probes, activation=activation,
                            sinks=sinks)
        self.monitor: Optional[Monitor] = None
        self._step: Any = None          # the open `monitor.step()` context, between its first and last batch
        self._stepped_at = 0            # trainer.global_step when the open step began
        self._loss: Optional[Tensor] = None
        self._hooks: list = []          # optimizer post-step hooks, for the fit (a counter: no work, no sync)
        self._updated = False           # set by them: the optimizer did update in the open step
        self._clip: tuple = (None, None)  # the Trainer's (gradient_clip_val, algorithm), applied here, handed back

    # ---- the fit -------------------------------------------------------------------------------------------

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        planned = trainer.estimated_stepping_batches
        # step_hooks=False: Lightning runs optimizer.step(closure), whose pre-step hooks fire before the closure's
        # backward; on_before_optimizer_step (after backward and clipping's inputs are final) says it instead
        # fp16 precision scales the loss with a GradScaler, which the activation gradients' hooks see scaled
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self.monitor = Monitor(pl_module, optimizers=trainer.optimizers, step_hooks=False, scaler=scaler,
                               steps=int(planned) if math.isfinite(planned) else None, **self.options)
        self._clip = (trainer.gradient_clip_val, trainer.gradient_clip_algorithm)
        trainer.gradient_clip_val = None  # this callback clips in on_before_optimizer_step (module docstring)
        # did each step's update happen (a GradScaler may skip it)? Every step: amp/skipped_steps counts them all
        self._hooks = [opt.register_step_post_hook(self._on_update) for opt in trainer.optimizers]

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._end_step()
        self._finish(trainer)

    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", error: BaseException) -> None:
        if self.monitor is None:
            return
        if self._step is not None:
            step, self._step = self._step, None
            step.__exit__(type(error), error, error.__traceback__)  # drops the step's values, removes its hooks
        self._finish(trainer, error)

    def _finish(self, trainer: "pl.Trainer", error: Optional[BaseException] = None) -> None:
        self._remove_hooks()
        trainer.gradient_clip_val, trainer.gradient_clip_algorithm = self._clip
        if self.monitor is not None:
            self.monitor.close(error)

    # ---- one update ----------------------------------------------------------------------------------------

    def on_train_batch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch: Any,
                             batch_idx: int) -> None:
        if self._step is None:  # the first micro-batch of an update
            self._step, self._stepped_at, self._loss = self.monitor.step(), trainer.global_step, None
            self._updated = False
            self._step.__enter__()

    def _on_update(self, optimizer: Any, *_: Any) -> None:
        self._updated = True
        self.monitor.note_update(optimizer)  # a fused optimizer's step may be a scaler's skip (Monitor.note_update)

    def on_before_optimizer_step(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", optimizer) -> None:
        # a GAN's G step after its D step, in one batch: G's gradients come from a later backward than those read
        # (found by a researcher: missing at step 0, a batch old after, in silence)
        self.monitor.refuse_a_second_backward(optimizer)
        value, algorithm = self._clip
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if value is None or value <= 0:
            self.monitor.gradients_ready()
        elif algorithm == "value":  # a GradClipAlgorithmType: a str enum
            self.monitor.clip_grad_value_(params, value)
        else:
            self.monitor.clip_grad_norm_(params, value)
        self.monitor.before_update()

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, Tensor):
            self._loss = loss.detach() if self._loss is None else self._loss + loss.detach()
        if trainer.global_step != self._stepped_at:  # the optimizer stepped: the update is complete
            self._end_step()

    def _end_step(self) -> None:
        if self._step is None:
            return
        if self._loss is not None:
            self.monitor.record(loss=self._loss)
        if not self._updated:
            self.monitor.update_skipped()
        step, self._step = self._step, None
        step.__exit__(None, None, None)

    def _remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
