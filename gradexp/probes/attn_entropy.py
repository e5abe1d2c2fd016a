"""attn_entropy/<layer>: the entropy of each block's attention distributions, in nats, averaged over heads, queries
and the batch: H = -sum_j p_ij log p_ij per query i, over the keys it may attend to (a causal mask's excluded keys
have p = 0 and add nothing). Its collapse toward 0 is a known instability (Zhai et al. 2023, "Stabilizing
Transformer Training by Preventing Attention Entropy Collapse"); log(T) is uniform attention.

Only layers that declare the attention capability (probes/layers.py) are measured; for a run without one the probe
is not built. Inside `watch` (logging steps) each attention module's callback gets its scores and weights and
leaves one 0-d tensor on the device; outside, the modules run their fused kernel and the probe does nothing."""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from torch import Tensor, nn

from gradexp.probes.base import Probe, ProbeContext, Scalars
from gradexp.probes.layers import ATTENTION, Layers, has_capability

PREFIX = "attn_entropy/"


def attention_layers(layers: Layers) -> Layers:
    return [(name, layer) for name, layer in layers if has_capability(layer, ATTENTION)]


def entropy(scores: Tensor, probs: Tensor) -> Tensor:
    """Mean entropy (0-d float64) of softmax rows; scores (..., T) with -inf at masked keys, probs their softmax.
    From log_softmax of the scores in float64, so a row near one-hot keeps its small entropy."""
    logp = scores.detach().double().log_softmax(dim=-1)
    p = probs.detach().double()
    return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(dim=-1).mean()


class AttnEntropy(Probe):
    def __init__(self, layers: Layers) -> None:
        self.layers = attention_layers(layers)
        self.found: dict[str, list[Tensor]] = {}  # layer -> the mean entropy of each call this step

    @classmethod
    def from_context(cls, context: ProbeContext) -> Optional["AttnEntropy"]:
        return cls(context.layers) if attention_layers(context.layers) else None  # no attention: nothing to do

    @contextlib.contextmanager
    def watch(self, model: nn.Module) -> Iterator[None]:
        modules = [(name, layer.attention()) for name, layer in self.layers]
        self.found = {}  # a fresh step (see act_grads.py watch)
        for name, module in modules:
            module.on_attention = self._keep(name)
        try:
            yield
        finally:
            for _, module in modules:
                module.on_attention = None  # back to the fused kernel

    def _keep(self, name: str):
        def on_attention(scores: Tensor, probs: Tensor) -> None:
            self.found.setdefault(name, []).append(entropy(scores, probs))
        return on_attention

    def after_backward(self, model: nn.Module) -> Scalars:
        # a block called several times in one step (gradient accumulation): the mean over its calls
        found = {f"{PREFIX}{name}": torch.stack(calls).mean() for name, calls in self.found.items()}
        self.found = {}
        return found
