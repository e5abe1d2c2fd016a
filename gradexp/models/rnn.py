"""Stacked recurrent models (Elman RNN, LSTM, GRU) with a per-step readout head.

Each block wraps a one-layer torch module (`block.rnn`) so parameter names are
layers.<i>.rnn.weight_ih_l0 etc. When the configured activation is the one PyTorch's fused kernel
computes (tanh; also relu for Elman) and no per-step probe is attached, the fused module runs.
Otherwise an unrolled Python loop runs over the same parameters with the same gate order
(LSTM i,f,g,o; GRU r,z,n), using the activation in place of tanh; gates stay sigmoid. The LSTM's loop
records no autograd graph and has its backward written out (lstm_bptt.py: a bptt step ~4x cheaper); the Elman
and GRU loops are plain autograd.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .lstm_bptt import lstm_unrolled
from .layers import check_positive, make_activation, make_norm, numbered_blocks

_TORCH_CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class RecurrentBlock(nn.Module):
    """One recurrent layer + norm over features; (B, T, F) -> (B, T, H)."""

    # the layer contract's capabilities (probes/layers.py): per-step hidden states, and where the activation shows
    gradexp_capabilities = frozenset({"time_steps", "activation_site"})

    def __init__(self, cell: str, d_in: int, width: int, activation: str, norm: str) -> None:
        super().__init__()
        self.cell = cell
        self.activation = activation
        self.act = make_activation(activation)
        kwargs = dict(num_layers=1, batch_first=True)
        if cell == "rnn":  # fused Elman only knows tanh/relu; others use the loop (parameters identical)
            kwargs["nonlinearity"] = "relu" if activation == "relu" else "tanh"
        self.rnn = _TORCH_CELLS[cell](d_in, width, **kwargs)
        self.norm = make_norm(norm, width, "sequence")
        # Called as on_step(t, h_t) with every hidden state (B, H) in time order during the forward; tensor hooks
        # registered on h_t receive the total dL/dh_t (the autograd loops call it before step t+1 uses h_t; the
        # LSTM hands over leaves whose gradient is that total, lstm_bptt.py).
        self.on_step: Callable[[int, Tensor], None] | None = None
        self._workspaces: list = []  # the unrolled LSTM's (T, B, 4H) buffers, reused across steps (lstm_bptt)

    def activation_site(self) -> tuple[nn.Module, bool, int]:
        return self.norm, True, -1  # the norm receives the hidden states (B, T, H): read its input; units last

    @property
    def fused(self) -> bool:
        fusable = self.activation == "tanh" or (self.cell == "rnn" and self.activation == "relu")
        return fusable and self.on_step is None

    def forward(self, x: Tensor) -> Tensor:  # (B, T, F) -> (B, T, H)
        if not self.fused:
            return self.norm(self._unrolled(x))
        if self._workspaces:
            # The pool serves unrolled steps that follow one another (log.bptt_every=1). Held through fused steps it
            # slows each of the next ones: the first by ~7 ms on the LSTM benchmark (T=100, an 8 ms step; measured,
            # not explained: not the allocator's thresholds). The next unrolled step, bptt_every steps on, takes
            # fresh buffers.
            self._workspaces.clear()
        return self.norm(self.rnn(x)[0])

    def _unrolled(self, x: Tensor) -> Tensor:  # (B, T, F) -> (B, T, H)
        r = self.rnn
        if self.cell == "lstm" and not torch.is_autocast_enabled(x.device.type):  # backward written out (lstm_bptt)
            return lstm_unrolled(x, r, self.act, self.on_step, self._workspaces)
        x_proj = F.linear(x, r.weight_ih_l0, r.bias_ih_l0)  # (B, T, G*H): all steps at once
        h = x.new_zeros(x.shape[0], r.hidden_size)  # (B, H)
        c = torch.zeros_like(h)  # LSTM cell state; unused by the others
        outputs = []
        for t, xp in enumerate(x_proj.unbind(1)):
            h_proj = F.linear(h, r.weight_hh_l0, r.bias_hh_l0)  # (B, G*H)
            h, c = self._step(xp, h_proj, h, c)
            if self.on_step is not None:
                self.on_step(t, h)
            outputs.append(h)
        return torch.stack(outputs, dim=1)

    def _step(self, xp: Tensor, hp: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """One time step from the input / hidden projections (B, G*H); returns (h_t, c_t)."""
        if self.cell == "rnn":
            return self.act(xp + hp), c
        if self.cell == "lstm":
            i, f, g, o = (xp + hp).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * self.act(g)
            return torch.sigmoid(o) * self.act(c), c
        xr, xz, xn = xp.chunk(3, dim=-1)
        hr, hz, hn = hp.chunk(3, dim=-1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = self.act(xn + r * hn)  # reset gate scales the hidden projection incl. its bias, as in torch
        return (1 - z) * n + z * h, c


class _Recurrent(nn.Module):
    """Input (B, T, F); output (B, readout_steps, num_outputs) from the last readout_steps steps."""

    CELL = ""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, depth: int, width: int,
                 residual: bool, activation: str, norm: str, readout_steps: int = 0) -> None:
        super().__init__()
        name = type(self).__name__
        if residual:
            raise ValueError(f"{name}: residual=True is only supported for mlp and cnn")
        if len(input_shape) != 2:
            raise ValueError(f"{name} needs sequence inputs (T, F), got input_shape {tuple(input_shape)}")
        check_positive("depth", depth)
        check_positive("width", width)
        check_positive("readout_steps", readout_steps)
        if readout_steps > input_shape[0]:
            raise ValueError(f"readout_steps {readout_steps} exceeds sequence length {input_shape[0]}")
        self.readout_steps = readout_steps
        features = input_shape[1]
        self.layers = nn.ModuleList(
            RecurrentBlock(self.CELL, features if i == 0 else width, width, activation, norm)
            for i in range(depth)
        )
        self.head = nn.Linear(width, num_outputs)

    def watched_layers(self) -> list[tuple[str, nn.Module]]:
        return numbered_blocks(self.layers)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, F) -> (B, k, num_outputs)
        h = x
        for layer in self.layers:
            h = layer(h)
        return self.head(h[:, -self.readout_steps:])  # (B, k, H) -> (B, k, C)


class RNN(_Recurrent):
    """Elman RNN: h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)."""

    CELL = "rnn"


class LSTM(_Recurrent):
    CELL = "lstm"


class GRU(_Recurrent):
    CELL = "gru"
