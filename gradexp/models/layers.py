"""Activation, normalization and weight-init factories shared by every model family.

Every fact about an option (its torch class, its kaiming gain, its init rule) lives in gradexp/config/registry.py;
this module only builds from it. Names are validated here too, so that a model built from Python with a typo
fails with one message listing the allowed names."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from gradexp.config.registry import ACTIVATIONS, INITS, NORMS, check_name


def check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def numbered_blocks(blocks: nn.ModuleList) -> list[tuple[str, nn.Module]]:
    """The layer contract (probes/layers.py) of gradexp's families: each hidden block in forward order, named as
    in named_parameters() (layers.<i>), so logs sort by depth."""
    return [(f"layers.{i}", block) for i, block in enumerate(blocks)]


def make_activation(name: str) -> nn.Module:
    check_name("activation", name, ACTIVATIONS)
    return ACTIVATIONS[name].build()


class SequenceBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the features of every time step: statistics pool batch and time."""

    def forward(self, x: Tensor) -> Tensor:  # (B, T, H)
        return super().forward(x.transpose(1, 2)).transpose(1, 2)  # BatchNorm1d wants (B, H, T)


def make_norm(name: str, width: int, layout: str) -> nn.Module:
    """Norm for hidden activations laid out as "vector" (B, H), "image" (B, C, H, W) or "sequence" (B, T, H)."""
    check_name("norm", name, NORMS)
    factory = getattr(NORMS[name], layout)
    return nn.Identity() if factory is None else factory(width)


def _init_matrix(w: Tensor, scheme: str, gain: float, std: float, activation: str) -> None:
    """Apply one named scheme to one weight matrix (or one gate block of it) in place."""
    apply = INITS[scheme].apply
    if apply is not None:
        apply(w, gain=gain, std=std, nonlinearity=ACTIVATIONS[activation].kaiming)


def _gates(module: nn.RNNBase) -> int:
    """Gate blocks stacked along the rows of weight_ih / weight_hh (LSTM i,f,g,o; GRU r,z,n)."""
    return 4 if isinstance(module, nn.LSTM) else 3 if isinstance(module, nn.GRU) else 1


def _init_recurrent(module: nn.RNNBase, scheme: str, recurrent: str, init: Callable) -> None:
    named = dict(module.named_parameters(recurse=False))
    for name, p in named.items():
        hh = name.startswith("weight_hh")
        s = recurrent if hh else scheme
        if name.startswith("weight") and s != "default":
            for block in p.chunk(_gates(module), dim=0):  # (H, in) views: each gate its own matrix
                init(block, s, hh)
    if scheme != "default" or recurrent != "default":
        for name, p in named.items():
            if name.startswith("bias"):
                p.zero_()


def init_weights(model: nn.Module, scheme: str, gain: float, std: float, activation: str,
                 recurrent: str | None = None, recurrent_gain: float | None = None) -> None:
    """Initialize every Linear / Conv2d weight and recurrent weight_ih / weight_hh in place.

    `default` keeps PyTorch's own values; any other scheme also zeroes the biases of the modules it
    touches. Norm layers are left alone. `recurrent` is the scheme for weight_hh (None = `scheme`),
    `recurrent_gain` its gain (None = `gain`): e.g. orthogonal weight_hh with spectral radius recurrent_gain.
    """
    check_name("init scheme", scheme, INITS)
    recurrent = scheme if recurrent is None else recurrent
    check_name("recurrent init scheme", recurrent, INITS)
    check_name("activation", activation, ACTIVATIONS)

    recurrent_gain = gain if recurrent_gain is None else recurrent_gain

    def init(w: Tensor, s: str, hh: bool = False) -> None:
        _init_matrix(w, s, recurrent_gain if hh else gain, std, activation)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)) and scheme != "default":
                init(m.weight, scheme)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.RNNBase):
                _init_recurrent(m, scheme, recurrent, init)
