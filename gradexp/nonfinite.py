"""First non-finite localisation without anomaly mode.

Every step adds one device op: a flag |= (loss is not finite). At each check point (the steps that
already synchronise: logging and evaluation steps) the flag also takes in max|.| of every parameter and
gradient, is read once, and if clean a Snapshot of the training state is refreshed. When the flag
fires, the snapshot is restored and the steps since it are replayed with checking hooks on every module
until the first step where something is NaN/Inf. Reported, in order of precedence within that step:
- phase "forward": the first module (in execution order, innermost first) whose output is non-finite,
  or "input" when the batch itself is, or "loss" when only the loss is;
- phase "backward": the first module output gradient, or parameter gradient, that is non-finite in the
  order backward produced them (output side first).
A replay that finds nothing (non-deterministic kernels) still reports the check step with "replayed": false."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import torch
from torch import Tensor, nn

from gradexp.probes.base import named_parameters
from gradexp.snapshot import Snapshot


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
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

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
        self.flag = torch.zeros((), dtype=torch.bool, device=run.task.x_train.device)
        self.snapshot = Snapshot(run)
        self.snapshot_step = start_step  # the state in the snapshot is the one before this step
        self.found: Optional[dict] = None

    def observe(self, loss: Tensor) -> None:  # every step: device op only
        self.flag |= ~torch.isfinite(loss)

    def check(self, step: int, step_fn) -> Optional[dict]:
        """At a check point (host sync allowed): None while everything is finite, else the localisation
        (once). With stop_on_nonfinite false the training state is put back and training goes on."""
        if self.found is not None:
            return None
        params = [p for _, p in named_parameters(self.run.model)]
        tensors = [p.detach() for p in params] + [p.grad for p in params if p.grad is not None]
        self.flag |= ~torch.isfinite(torch.stack(torch._foreach_norm(tensors, float("inf"))).max())
        if not bool(self.flag):
            self.snapshot.take()
            self.snapshot_step = step + 1
            return None
        now = Snapshot(self.run) if not self.settings.stop_on_nonfinite else None
        self.snapshot.restore()
        self.found = localise(self.run, self.settings, step_fn, self.snapshot_step, step)
        if now is not None:
            now.restore()
        return self.found
