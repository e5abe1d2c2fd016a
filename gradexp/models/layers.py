"""Activation, normalization and weight-init factories shared by every model family.

Names are validated here so that a typo fails with one message listing the allowed names.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor, nn

ACTIVATIONS: tuple[str, ...] = (
    "relu", "leaky_relu", "elu", "selu", "gelu", "tanh", "sigmoid", "softsign", "identity",
)
NORMS: tuple[str, ...] = ("none", "batchnorm", "layernorm")
INIT_SCHEMES: tuple[str, ...] = (
    "default", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal",
    "orthogonal", "normal",
)
LEAKY_SLOPE = 0.01

_ACTIVATION_FACTORIES: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(LEAKY_SLOPE),
    "elu": nn.ELU,
    "selu": nn.SELU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softsign": nn.Softsign,
    "identity": nn.Identity,
}

# Activation -> nonlinearity name for torch.nn.init.calculate_gain (kaiming_* schemes).
# torch has no gain for elu / gelu (both ReLU-like for x > 0, so "relu") nor for softsign
# (tanh-like but flatter near 0; "linear", i.e. gain 1).
KAIMING_NONLINEARITY: dict[str, str] = {
    "relu": "relu",
    "leaky_relu": "leaky_relu",
    "elu": "relu",
    "selu": "selu",
    "gelu": "relu",
    "tanh": "tanh",
    "sigmoid": "sigmoid",
    "softsign": "linear",
    "identity": "linear",
}


def check_name(kind: str, name: str, allowed: Iterable[str]) -> None:
    """Raise ValueError naming the allowed values when `name` is not one of them."""
    allowed = tuple(allowed)
    if name not in allowed:
        raise ValueError(f"unknown {kind} {name!r}; allowed: {', '.join(allowed)}")


def check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def make_activation(name: str) -> nn.Module:
    check_name("activation", name, ACTIVATIONS)
    return _ACTIVATION_FACTORIES[name]()


class SequenceBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the features of every time step: statistics pool batch and time."""

    def forward(self, x: Tensor) -> Tensor:  # (B, T, H)
        return super().forward(x.transpose(1, 2)).transpose(1, 2)  # BatchNorm1d wants (B, H, T)


def make_norm(name: str, width: int, layout: str) -> nn.Module:
    """Norm for hidden activations laid out as "vector" (B, H), "image" (B, C, H, W) or "sequence" (B, T, H)."""
    check_name("norm", name, NORMS)
    if name == "none":
        return nn.Identity()
    if layout == "image":
        # GroupNorm with one group normalizes each example over (C, H, W): layer norm for conv maps.
        return nn.BatchNorm2d(width) if name == "batchnorm" else nn.GroupNorm(1, width)
    if name == "layernorm":
        return nn.LayerNorm(width)
    return SequenceBatchNorm(width) if layout == "sequence" else nn.BatchNorm1d(width)


def _init_matrix(w: Tensor, scheme: str, gain: float, std: float, activation: str) -> None:
    """Apply one named scheme to one weight matrix (or one gate block of it) in place."""
    if scheme in ("xavier_uniform", "xavier_normal"):
        getattr(nn.init, scheme + "_")(w, gain=gain)
    elif scheme in ("kaiming_uniform", "kaiming_normal"):
        nonlinearity = KAIMING_NONLINEARITY[activation]
        a = LEAKY_SLOPE if nonlinearity == "leaky_relu" else 0.0
        getattr(nn.init, scheme + "_")(w, a=a, mode="fan_in", nonlinearity=nonlinearity)
        w.mul_(gain)  # init.gain scales on top of the activation's own gain
    elif scheme == "orthogonal":
        nn.init.orthogonal_(w, gain=gain)
    elif scheme == "normal":
        nn.init.normal_(w, mean=0.0, std=std * gain)


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
    check_name("init scheme", scheme, INIT_SCHEMES)
    recurrent = scheme if recurrent is None else recurrent
    check_name("recurrent init scheme", recurrent, INIT_SCHEMES)
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
