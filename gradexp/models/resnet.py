"""CIFAR-style ResNet (He et al. 2016, section 4.2): a 3x3 stem conv, then 3 stages of `depth` basic blocks with
widths w, 2w, 4w (16/32/64 by default), the first block of stages 2 and 3 halving H and W; global average pooling
and a linear head. 6*depth+2 weighted layers: depth=3 is ResNet-20, depth=9 ResNet-56. With residual=False the
same shape without the skips (the paper's "plain" net)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .layers import check_positive, make_activation, make_norm, numbered_blocks

STAGES = 3


class BasicBlock(nn.Module):
    """conv3x3(stride) -> norm -> act -> conv3x3 -> norm, plus the shortcut, -> act.
    (B, c_in, H, W) -> (B, c_out, H/s, W/s).

    The shortcut is the paper's option A: identity, subsampled and zero-padded in channels where the shape changes,
    so residual and plain nets have exactly the same parameters."""
    gradexp_capabilities = frozenset({"activation_site"})  # the layer contract's capabilities (probes/layers.py)

    def __init__(self, c_in: int, c_out: int, stride: int, activation: str, norm: str, residual: bool) -> None:
        super().__init__()
        bias = norm == "none"  # a norm right after the conv makes its bias redundant
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)
        self.norm1 = make_norm(norm, c_out, "image")
        self.act1 = make_activation(activation)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias)
        self.norm2 = make_norm(norm, c_out, "image")
        self.act = make_activation(activation)  # the block's output: act_stats reads its saturation here
        self.residual, self.stride, self.extra = residual, stride, c_out - c_in

    def shortcut(self, x: Tensor) -> Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x  # zero channels appended

    def activation_site(self) -> tuple[nn.Module, bool, int]:
        return self.act, False, 1  # the block's output activation (B, C, H, W); units (channels) on dim 1

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        return self.act(y + self.shortcut(x) if self.residual else y)


class Stem(nn.Module):
    """conv3x3 -> norm -> act: the image's channels to width, at full resolution."""
    gradexp_capabilities = frozenset({"activation_site"})

    def __init__(self, c_in: int, width: int, activation: str, norm: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, width, 3, padding=1, bias=norm == "none")
        self.norm = make_norm(norm, width, "image")
        self.act = make_activation(activation)

    def activation_site(self) -> tuple[nn.Module, bool, int]:
        return self, False, 1  # its output is the activation's output

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, width, H, W)
        return self.act(self.norm(self.conv(x)))


class ResNet(nn.Module):
    """Input (B, C, H, W); output (B, num_outputs). Hidden layers, watched by the probes: layers.0 the stem, then
    layers.1 .. layers.{3*depth} the blocks in forward order."""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, depth: int, width: int,
                 residual: bool, activation: str, norm: str, readout_steps: int = 0) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"ResNet needs image inputs (C, H, W), got input_shape {tuple(input_shape)}")
        check_positive("depth", depth)
        check_positive("width", width)
        blocks, c_in = [Stem(input_shape[0], width, activation, norm)], width
        for stage in range(STAGES):
            c_out = width * 2 ** stage
            for i in range(depth):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(c_in, c_out, stride, activation, norm, residual))
                c_in = c_out
        self.layers = nn.ModuleList(blocks)
        self.head = nn.Linear(c_in, num_outputs)

    def watched_layers(self) -> list[tuple[str, nn.Module]]:
        return numbered_blocks(self.layers)  # the stem, then every block

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, num_outputs)
        h = x
        for layer in self.layers:
            h = layer(h)
        return self.head(h.mean(dim=(2, 3)))  # global average pool: (B, 4*width)
