"""Plain convolutional net: depth blocks of 3x3 conv -> norm -> activation at full resolution,
then global average pooling and a linear head."""
from __future__ import annotations

from torch import Tensor, nn

from .layers import check_positive, make_activation, make_norm, numbered_blocks


class ConvBlock(nn.Module):
    """3x3 conv with padding 1 keeps (H, W); with residual=True it returns x + f(x)."""

    gradexp_capabilities = frozenset({"activation_site"})  # the layer contract's capabilities (probes/layers.py)

    def __init__(self, c_in: int, width: int, activation: str, norm: str, residual: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, width, kernel_size=3, padding=1)
        # "layernorm" here is GroupNorm(1, width): each example normalized over (C, H, W).
        self.norm = make_norm(norm, width, "image")
        self.act = make_activation(activation)
        self.residual = residual

    def activation_site(self) -> tuple[nn.Module, bool, int]:
        # the activation module's output (B, C, H, W), units (channels) on dim 1; without the residual, the block's own
        return (self.act if self.residual else self), False, 1

    def forward(self, x: Tensor) -> Tensor:  # (B, c_in, H, W) -> (B, width, H, W)
        y = self.act(self.norm(self.conv(x)))
        return x + y if self.residual else y


class CNN(nn.Module):
    """Input (B, C, H, W); output (B, num_outputs)."""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, depth: int, width: int,
                 residual: bool, activation: str, norm: str, readout_steps: int = 0) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"CNN needs image inputs (C, H, W), got input_shape {tuple(input_shape)}")
        check_positive("depth", depth)
        check_positive("width", width)
        channels = input_shape[0]
        # layers.0 changes the channel count, so it is never residual.
        self.layers = nn.ModuleList(
            ConvBlock(channels if i == 0 else width, width, activation, norm, residual and i > 0)
            for i in range(depth)
        )
        # head is a bare Linear (pooling happens in forward) so its parameters are head.weight/bias.
        self.head = nn.Linear(width, num_outputs)

    def watched_layers(self) -> list[tuple[str, nn.Module]]:
        return numbered_blocks(self.layers)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, num_outputs)
        h = x
        for layer in self.layers:
            h = layer(h)
        return self.head(h.mean(dim=(2, 3)))  # global average pool: (B, width)
