"""bptt_grad_norm/<layer>: the profile ||dLoss/dh_t|| (L2 over batch and features) for every time step t
of every stacked recurrent layer, as a 1-d tensor (T,) in time order.

On its own interval (log.bptt_every, a multiple of log.every; 0 = off) because it needs the unrolled
loop: each block's `on_step(t, h_t)` callback receives every hidden state before step t+1 uses it, and
a tensor hook on h_t then receives the total gradient (through the recurrence and the layer above).
While no callback is set the blocks run PyTorch's fused kernels, so other steps pay nothing. On an LSTM the
unrolled pass records no per-step graph and has its backward written out (models/lstm_bptt.py); the h_t it
hands over are leaves whose gradient is that total, so the hooks here read the same dLoss/dh_t either way."""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

from torch import Tensor, nn

from gradexp.probes.base import Probe, ProbeContext, Scalars
from gradexp.probes.layers import TIME_STEPS, Layers, has_capability
from gradexp.probes.norms import norm_vector

PREFIX = "bptt_grad_norm/"


def recurrent_layers(layers: Layers) -> Layers:
    """The watched layers that declare the time-steps capability (probes/layers.py)."""
    return [(name, layer) for name, layer in layers if has_capability(layer, TIME_STEPS)]


class BpttGradNorms(Probe):
    def __init__(self, layers: Layers, context: Optional[ProbeContext] = None) -> None:
        self.layers = recurrent_layers(layers)
        self.context = context or ProbeContext(layers)  # divides out the loss scale, if any
        self.grads: dict[str, dict[int, Tensor]] = {}  # layer -> t -> dLoss/dh_t (B, H), normed after backward
        self.lengths: dict[str, int] = {}              # layer -> T seen in the forward pass

    @classmethod
    def from_context(cls, context: ProbeContext) -> Optional["BpttGradNorms"]:
        return cls(context.layers, context) if recurrent_layers(context.layers) else None  # no recurrent layer: nothing to do

    @contextlib.contextmanager
    def watch(self, model: nn.Module) -> Iterator[None]:
        layers = self.layers
        self.grads, self.lengths = {}, {}  # a fresh step (see act_grads.py watch)
        for name, layer in layers:
            layer.on_step = self._on_step(name)
        try:
            yield
        finally:
            for _, layer in layers:
                layer.on_step = None  # back to the fused kernels

    def _on_step(self, name: str):
        grads = self.grads.setdefault(name, {})

        def on_step(t: int, h: Tensor) -> None:  # h: (B, H)
            self.lengths[name] = t + 1
            if h.requires_grad:
                h.register_hook(lambda grad: grads.__setitem__(t, self.context.unscaled(grad.detach())))

        return on_step

    def after_backward(self, model: nn.Module) -> Scalars:
        profiles: Scalars = {}
        for name, grads in self.grads.items():
            if not grads:
                continue
            norms = norm_vector(list(grads.values()))  # one batched pass over all time steps, (steps reached,)
            profile = norms.new_zeros(self.lengths[name])  # a step the loss does not reach has gradient 0
            profile[list(grads)] = norms  # backward reached them last to first: into time order
            profiles[f"{PREFIX}{name}"] = profile
        self.grads, self.lengths = {}, {}
        return profiles
