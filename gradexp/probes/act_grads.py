"""act_grad_norm/<layer>: L2 norm over batch and features of dLoss/d(output of hidden layer).

Forward hooks on each watched layer (the layer contract, probes/layers.py) attach a tensor hook to its output;
both exist only while a logging step is being watched (probes/base.py Hooks), so ordinary steps pay nothing."""
from __future__ import annotations

import functools
from typing import ContextManager

from torch import Tensor, nn

from gradexp.probes.base import Hooks, Probe, ProbeContext, Scalars, tags
from gradexp.probes.layers import Layers, layer_output
from gradexp.probes.norms import combined_norm, norm_vector


class ActGrads(Probe):
    """The tensor hooks only keep each gradient; after backward one batched exact_norms
    (probes/norms.py) takes them all. A layer whose output got several gradients in one step (called twice: weight
    sharing; or several backward passes: gradient accumulation) reports the norm of all of them together,
    sqrt(sum of squares), as if they were one concatenated output."""

    def __init__(self, layers: Layers, context: ProbeContext | None = None) -> None:
        self.layers = layers
        self.context = context or ProbeContext(layers)  # divides out the loss scale, if any
        self.grads: dict[str, list] = {}  # layer -> dLoss/d(output) of each call (None until its backward)
        self.hooks = Hooks()
        for name, layer in layers:
            self.hooks.forward(layer, self._forward_hook(name))

    @classmethod
    def from_context(cls, context: ProbeContext) -> "ActGrads":
        return cls(context.layers, context)

    def watch(self, model: nn.Module) -> ContextManager:
        self.grads = {}  # a fresh step: calls after the last after_backward (LBFGS's closure re-runs) are not this step's
        return self.hooks.attached()

    def _forward_hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            output = layer_output(output)
            if output is not None and output.requires_grad:
                calls = self.grads.setdefault(name, [])
                calls.append(None)  # this call's slot: a second backward through the same output replaces, not adds
                # list.__setitem__ as the hook: the gradient goes into its slot with no Python frame during backward
                output.register_hook(functools.partial(calls.__setitem__, len(calls) - 1))

        return hook

    def after_backward(self, model: nn.Module) -> Scalars:
        grads = {name: [g for g in calls if g is not None] for name, calls in self.grads.items()}
        grads, self.grads = {name: calls for name, calls in grads.items() if calls}, {}
        if not grads:
            return {}
        # the hooks kept what autograd passed (never requiring grad); a loss scale divides out here, once per step
        flat = [self.context.unscaled(g) for calls in grads.values() for g in calls]
        norms = norm_vector(flat)  # one batched pass, (calls,)
        if len(norms) == len(grads):  # one call per layer: the usual case
            return {tags("act_grad_norm/", list(grads)): norms}
        out, at = {}, 0
        for name, calls in grads.items():
            out[f"act_grad_norm/{name}"] = norms[at] if len(calls) == 1 else combined_norm(norms[at:at + len(calls)])
            at += len(calls)
        return out
