"""First non-finite localisation without anomaly mode.

Every step keeps its loss (a 0-d device tensor) in a list: no device op, no sync. At each check point (the
steps that already synchronise: logging and evaluation steps) the losses are summed in float64 and read once,
together with the norms of every parameter and gradient when a snapshot is due (every SNAPSHOT_EVERY steps, or more
where a refresh would cost over SNAPSHOT_SHARE of the training time; it must be clean) and at the last step. While
finite, the Snapshot of the training state is refreshed when due.
When not, the snapshot is restored and the steps since it are replayed with checking hooks on every
module until the first step where something is NaN/Inf. Reported, in order of precedence within that step:
- phase "forward": the first module (in execution order, innermost first) whose output is non-finite,
  or "input" when the batch itself is, or "loss" when only the loss is;
- phase "backward": the first module output gradient, or parameter gradient, that is non-finite in the
  order backward produced them (output side first).
A replay that finds nothing (non-deterministic kernels) still reports the check step with "replayed": false."""
from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Iterator, Optional

import torch
from torch import Tensor, nn

from gradexp.probes.base import named_parameters, removed_on_exit
from gradexp.probes.norms import norm_vector
from gradexp.training.snapshot import Snapshot

# refresh the snapshot at a clean check point at most this often (in steps): a copy of model + optimizer
# state is a visible share of a small model's logging step, while a replay is paid only once, on divergence
SNAPSHOT_EVERY = 100
# and at most this share of the training time: on a small model one refresh (the state check and the copy) costs
# about one training step, so it is refreshed every few hundred steps instead (a replay stays well under a second)
SNAPSHOT_SHARE = 0.002
FOLD_EVERY = 256  # losses kept before they are summed without a check point


def _all_finite(value: Any) -> bool:
    tensors = [value] if isinstance(value, Tensor) else [v for v in value if isinstance(v, Tensor)] \
        if isinstance(value, (tuple, list)) else []
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def hidden_layer_of(module_name: str) -> str:
    """'layers.3.linear' -> 'layers.3'; 'head' -> 'head'."""
    parts = module_name.split(".")
    return ".".join(parts[:2]) if parts[0] == "layers" and len(parts) > 1 else parts[0]


class Checker:
    """Hooks recording the first non-finite forward output and backward gradient of one step."""

    def __init__(self) -> None:
        self.forward: Optional[str] = None
        self.backward: Optional[tuple[str, str]] = None  # (module or parameter name, what)

    @contextlib.contextmanager
    def watch(self, model: nn.Module) -> Iterator["Checker"]:
        handles = [model.register_forward_pre_hook(lambda m, args: self._forward("input", args))]
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(self._forward_hook(name)))
        for name, p in model.named_parameters():
            handles.append(p.register_post_accumulate_grad_hook(
                lambda p, name=name: self._backward(name, "parameter gradient", p.grad)))
        with removed_on_exit(handles):
            yield self

    def _forward(self, name: str, value: Any) -> None:
        if self.forward is None and not _all_finite(value):
            self.forward = name

    def _forward_hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            self._forward(name, output)
            for t in (output if isinstance(output, tuple) else (output,)):
                if isinstance(t, Tensor) and t.requires_grad:
                    t.register_hook(lambda g: self._backward(name, "output gradient", g))

        return hook

    def _backward(self, name: str, what: str, grad: Optional[Tensor]) -> None:
        if self.backward is None and grad is not None and not _all_finite(grad):
            self.backward = (name, what)


def localise(run: Any, settings: Any, step_fn, first: int, last: int) -> dict:
    """Replay steps first..last (the state must be at `first`) and report the first non-finite event."""
    for step in range(first, last + 1):
        with Checker().watch(run.model) as checker:
            loss = step_fn(run, settings, False)["loss/train"]
        if checker.forward is not None:
            return {"step": step, "phase": "forward", "layer": hidden_layer_of(checker.forward),
                    "tensor": f"{checker.forward} output" if checker.forward != "input" else "input batch"}
        if not _all_finite(loss):
            return {"step": step, "phase": "forward", "layer": "loss", "tensor": "loss/train"}
        if checker.backward is not None:
            name, what = checker.backward
            return {"step": step, "phase": "backward", "layer": hidden_layer_of(name), "tensor": f"{name} {what}"}
    return {"step": last, "phase": None, "layer": None, "tensor": "loss/train", "replayed": False}


class NonfiniteGuard:
    def __init__(self, run: Any, settings: Any, start_step: int) -> None:
        self.run, self.settings = run, settings
        # the losses since the last check, summed there: NaN/Inf stick in a sum (losses are >= 0, so no
        # inf - inf), and float64 cannot overflow on finite float32 losses. A list append per step costs a fraction of
        # the in-place add it replaces (a visible share of a small model's step); folded every FOLD_EVERY steps so
        # that long check intervals keep no long lists. On x_val's device: the val split lives there even when train
        # batches stream from host memory
        self.losses: list[Tensor] = []
        self.folded: Optional[Tensor] = None  # the sum of losses folded before this check interval ended
        self.snapshot = Snapshot(run)
        self.snapshot_step = start_step  # the state in the snapshot is the one before this step
        self.snapshot_every = SNAPSHOT_EVERY  # steps between refreshes, grown by what a refresh costs (_refreshed)
        self.snapshot_clock = time.perf_counter()  # when the snapshot was refreshed
        self.found: Optional[dict] = None

    def observe(self, loss: Tensor) -> None:  # every step: no device op, no sync
        self.losses.append(loss)
        if len(self.losses) >= FOLD_EVERY:
            self.folded = self._sum()
            self.losses = []

    def _sum(self) -> Tensor:
        """0-d float64: the losses since the last check."""
        total = self.losses[0].double() if len(self.losses) == 1 else torch.stack(self.losses).sum(dtype=torch.float64)
        return total if self.folded is None else self.folded + total.to(self.folded.device)

    def check(self, step: int, step_fn) -> Optional[dict]:
        """At a check point (host sync allowed): None while everything is finite, else the localisation
        (once). With stop_on_nonfinite false the training state is put back and training goes on."""
        if self.found is not None:
            return None
        # Parameters and gradients are checked only where it matters: before a snapshot is refreshed (it must be
        # clean) and at the last step. Elsewhere a non-finite gradient shows in the next step's loss.
        snapshot_due = step + 1 - self.snapshot_step >= self.snapshot_every
        started = time.perf_counter()
        total = self._sum() if self.losses else self.folded
        if snapshot_due or step == self.settings.steps - 1:
            total = self._state_norm() if total is None else total + self._state_norm().to(total.device)
        self.losses, self.folded = [], None
        if total is None or math.isfinite(total.item()):  # the host read of the check point
            if snapshot_due:
                self.snapshot.take()
                self._refreshed(step + 1, started)
            return None
        now = Snapshot(self.run) if not self.settings.stop_on_nonfinite else None
        self.snapshot.restore()
        self.found = localise(self.run, self.settings, step_fn, self.snapshot_step, step)
        if now is not None:
            now.restore()
        return self.found

    def _refreshed(self, snapshot_step: int, started: float) -> None:
        """The snapshot now holds the state before `snapshot_step`; the next refresh comes after SNAPSHOT_EVERY steps,
        or later where this refresh took more than SNAPSHOT_SHARE of the steps' time since the last one."""
        now = time.perf_counter()
        step_time = (started - self.snapshot_clock) / max(snapshot_step - self.snapshot_step, 1)
        needed = (now - started) / (SNAPSHOT_SHARE * step_time) if step_time > 0 else SNAPSHOT_EVERY
        self.snapshot_every = max(SNAPSHOT_EVERY, math.ceil(needed))
        self.snapshot_step, self.snapshot_clock = snapshot_step, now

    def _state_norm(self) -> Tensor:
        """The sum of the L2 norms of every parameter and gradient: non-finite exactly when some entry is. norm_vector
        (probes/norms.py) gives inf/NaN only for a tensor that holds one (a float32 norm that overflowed on finite
        entries is redone in float64) and, on CPU, takes the float32 kernel for the rest: this check runs at every
        snapshot, where a float64 norm of the whole state cost as much as a small model's training step. 0-d."""
        params = [p for _, p in named_parameters(self.run.model)]
        return norm_vector([p.detach() for p in params] + [p.grad for p in params if p.grad is not None]).sum()
