"""amp/underflow/<layer>: the share of a watched layer's gradient that the training precision throws away.

On a logging step, before the training forward pass, the probe runs a reference forward and backward pass of
the same batch in float32 (no autocast; torch.autograd.grad, so .grad is untouched, and buffers such as
batchnorm's running statistics are put back). For the layer's output gradient dLoss/d(output) and the gradients
of its own parameters, it counts the entries that are nonzero in that fp32 reference, and among them those
whose value in the training pass, still multiplied by the loss scale, is below the smallest normal number of
the training dtype (torch.finfo(dtype).tiny: 6.1e-5 for fp16, 1.2e-38 for bf16), i.e. zero or subnormal:

    amp/underflow/<layer> = #(fp32 != 0 and |scaled training value| < tiny) / #(fp32 != 0)   (0 if none)

Only with train.precision fp16 or bf16; the reference pass roughly doubles a logging step's cost."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional

import torch
from torch import Tensor, nn

from gradexp.probes.base import Probe, ProbeContext, Scalars, only_on, removed_on_exit
from gradexp.probes.layers import Layers, layer_output

PREFIX = "amp/underflow/"


class Underflow(Probe):
    def __init__(self, layers: Layers, precision: Any) -> None:
        self.layers, self.precision = layers, precision
        self.tiny = torch.finfo(precision.dtype).tiny
        self.reference_grads: dict[str, list[Optional[Tensor]]] = {}  # layer -> [d output, d params...] in fp32
        self.output_grads: dict[str, Tensor] = {}                     # layer -> d output of the training pass

    @classmethod
    def from_context(cls, context: ProbeContext) -> Optional["Underflow"]:
        mixed = context.precision is not None and context.precision.mixed
        return cls(context.layers, context.precision) if mixed else None

    def reference(self, model: nn.Module, loss_fn: Callable[[], Tensor]) -> None:
        outputs: dict[str, Tensor] = {}

        def keep(name: str):
            def on_output(module: nn.Module, inputs: tuple, output: Any) -> None:
                output = layer_output(output)
                if output is not None:
                    outputs[name] = output
            return on_output

        # the buffers are put back after the backward: batchnorm's backward reads the running statistics it saved,
        # and putting them back in place before it would bump their version under autograd's feet
        with _buffers_kept(model):
            with removed_on_exit([m.register_forward_hook(only_on(m, keep(n))) for n, m in self.layers]):
                loss = loss_fn()
            wrt = {name: ([outputs[name]] if name in outputs else []) + list(layer.parameters())
                   for name, layer in self.layers}
            flat = [t for ts in wrt.values() for t in ts]
            grads = iter(torch.autograd.grad(loss, flat, allow_unused=True))
        self.reference_grads = {name: [next(grads) for _ in ts] for name, ts in wrt.items()}
        self.has_output = {name: name in outputs for name in wrt}

    def watch(self, model: nn.Module) -> contextlib.AbstractContextManager:
        def hook(name: str):
            def on_output(module: nn.Module, inputs: tuple, output: Any) -> None:
                output = layer_output(output)
                if output is not None and output.requires_grad:
                    output.register_hook(lambda g: self.output_grads.__setitem__(name, g.detach()))
            return on_output

        return removed_on_exit([layer.register_forward_hook(only_on(layer, hook(n))) for n, layer in self.layers])

    def after_backward(self, model: nn.Module) -> Scalars:
        """Parameter gradients are unscaled by now: times the scale again gives the value the pass computed."""
        scale = self.precision.scale()
        out: Scalars = {}
        for name, layer in self.layers:
            reference = self.reference_grads.get(name)
            if reference is None:
                continue
            trained = [self.output_grads.get(name)] if self.has_output[name] else []
            trained += [None if p.grad is None else (p.grad if scale is None else p.grad * scale) for p in layer.parameters()]
            out[PREFIX + name] = self._share_lost(reference, trained)
        self.reference_grads, self.output_grads = {}, {}
        return out

    def _share_lost(self, reference: list, trained: list) -> Tensor:
        lost = nonzero = None
        for ref, got in zip(reference, trained):
            if ref is None:
                continue
            alive = ref != 0
            gone = alive if got is None else alive & (got.float().abs() < self.tiny)
            lost = gone.sum() if lost is None else lost + gone.sum()
            nonzero = alive.sum() if nonzero is None else nonzero + alive.sum()
        if lost is None:
            return torch.zeros(())
        return lost.double() / nonzero.clamp(min=1)


@contextlib.contextmanager
def _buffers_kept(model: nn.Module) -> Iterator[None]:
    """The reference pass must not move batchnorm's running statistics a second time this step."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
