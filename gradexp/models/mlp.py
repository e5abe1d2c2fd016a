"""Multi-layer perceptron: depth hidden blocks of Linear -> norm -> activation, then a linear head."""
from __future__ import annotations

import math

from torch import Tensor, nn

from .layers import check_positive, make_activation, make_norm, numbered_blocks


class MLPBlock(nn.Module):
    """One hidden layer; with residual=True it returns x + f(x) (needs width in == width out)."""

    gradexp_capabilities = frozenset({"activation_site"})  # the layer contract's capabilities (probes/layers.py)

    def __init__(self, d_in: int, width: int, activation: str, norm: str, residual: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, width)
        self.norm = make_norm(norm, width, "vector")
        self.act = make_activation(activation)
        self.residual = residual

    def activation_site(self) -> tuple[nn.Module, bool, int]:
        # the activation module's output (B, H), units on dim 1; without the residual that is the block's own output,
        # which the instruments watch anyway: naming the block spares the activation module a hook of its own
        return (self.act if self.residual else self), False, 1

    def forward(self, x: Tensor) -> Tensor:  # (B, d_in) -> (B, width)
        y = self.act(self.norm(self.linear(x)))
        return x + y if self.residual else y


class MLP(nn.Module):
    """Flattens each example, so any input_shape works; output (B, num_outputs)."""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, depth: int, width: int,
                 residual: bool, activation: str, norm: str, readout_steps: int = 0) -> None:
        super().__init__()
        check_positive("depth", depth)
        check_positive("width", width)
        d_in = math.prod(input_shape)
        # layers.0 changes the width, so it is never residual.
        self.layers = nn.ModuleList(
            MLPBlock(d_in if i == 0 else width, width, activation, norm, residual and i > 0)
            for i in range(depth)
        )
        self.head = nn.Linear(width, num_outputs)

    def watched_layers(self) -> list[tuple[str, nn.Module]]:
        return numbered_blocks(self.layers)

    def forward(self, x: Tensor) -> Tensor:  # (B, *input_shape) -> (B, num_outputs)
        h = x.flatten(1)
        for layer in self.layers:
            h = layer(h)
        return self.head(h)
