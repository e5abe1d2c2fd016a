"""Transformer encoder over sequences, with a causal option: a linear input projection (on one-hot tokens it is an
embedding table) plus sinusoidal positions, `depth` blocks of self-attention and a feed-forward net, and a linear
head on the last readout_steps positions (like the recurrent families).

norm_position places the norm group's layers (Xiong et al. 2020):
- post (the original Transformer): x = norm(x + attn(x)); x = norm(x + ffn(x));
- pre (GPT-2): x = x + attn(norm(x)); x = x + ffn(norm(x)), and one final norm before the head (head.0).
norm=batchnorm pools its statistics over batch and positions (SequenceBatchNorm), which lets a position see the
batch's later positions: refused with causal=True. The attention is written with explicit q/k/v/out nn.Linear
projections so that the init group reaches them."""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradexp.config.registry import NORM_POSITIONS

from .layers import check_positive, make_activation, make_norm, numbered_blocks


def check_transformer(width: int, heads: int, norm_position: str, ffn_mult: int, norm: str, causal: bool) -> None:
    """The constructor's refusals, each naming the key, the value and what is allowed (the CLI checks the same
    earlier: config/schema.py)."""
    check_positive("heads", heads)
    check_positive("ffn_mult", ffn_mult)
    if width % heads:
        divisors = [d for d in range(1, width + 1) if width % d == 0][:8]
        raise ValueError(f"heads {heads} does not divide width {width}; allowed: a divisor of it, e.g. "
                         + ", ".join(map(str, divisors)))
    if norm_position not in NORM_POSITIONS:
        raise ValueError(f"unknown norm_position {norm_position!r}; allowed: {', '.join(NORM_POSITIONS)}")
    if norm == "batchnorm" and causal:
        raise ValueError("norm batchnorm with causal=True: batch statistics pool every position, so a position "
                         "sees later ones; allowed: layernorm or none")


def sinusoidal(length: int, width: int) -> Tensor:
    """Vaswani et al.'s positions: PE[t, 2i] = sin(t / 10000^(2i/width)), PE[t, 2i+1] = cos(...). (length, width)"""
    t = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))  # (ceil(w/2),)
    pe = torch.zeros(length, width)
    pe[:, 0::2] = torch.sin(t * freq)
    pe[:, 1::2] = torch.cos(t * freq[: width // 2])
    return pe


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention; (B, T, D) -> (B, T, D).

    While `on_attention` is None it runs torch's fused scaled_dot_product_attention; when a probe sets it, the
    same computation runs written out and `on_attention(scores, probs)` receives the masked scores and the
    softmax (B, heads, T, T) (probes/attn_entropy.py), like the recurrent blocks' fused / unrolled switch."""

    def __init__(self, width: int, heads: int, causal: bool) -> None:
        super().__init__()
        self.heads, self.causal = heads, causal
        self.q, self.k, self.v, self.out = (nn.Linear(width, width) for _ in range(4))
        self.on_attention: Optional[Callable[[Tensor, Tensor], None]] = None

    def _split(self, x: Tensor) -> Tensor:  # (B, T, D) -> (B, nh, T, hs)
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        if self.on_attention is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        else:
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, nh, T, T)
            if self.causal:
                t = x.shape[1]
                future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
                scores = scores.masked_fill(future, float("-inf"))
            probs = scores.softmax(dim=-1)
            self.on_attention(scores, probs)
            y = probs @ v  # (B, nh, T, hs)
        return self.out(y.transpose(1, 2).flatten(2))  # (B, T, D)


class FeedForward(nn.Module):
    """Linear(D, ffn_mult*D) -> activation -> Linear(ffn_mult*D, D)."""

    def __init__(self, width: int, ffn_mult: int, activation: str) -> None:
        super().__init__()
        self.up = nn.Linear(width, ffn_mult * width)
        self.act = make_activation(activation)
        self.down = nn.Linear(ffn_mult * width, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.act(self.up(x)))


class TransformerBlock(nn.Module):
    """One block; its output is the residual stream (B, T, D), which the instruments watch."""

    # the layer contract's capabilities (probes/layers.py): where the activation shows, and attention weights
    gradexp_capabilities = frozenset({"activation_site", "attention"})

    def __init__(self, width: int, heads: int, ffn_mult: int, activation: str, norm: str, norm_position: str,
                 causal: bool) -> None:
        super().__init__()
        self.attn = SelfAttention(width, heads, causal)
        self.norm1 = make_norm(norm, width, "sequence")
        self.ffn = FeedForward(width, ffn_mult, activation)
        self.norm2 = make_norm(norm, width, "sequence")
        self.pre = norm_position == "pre"

    def activation_site(self) -> tuple[nn.Module, bool, int]:
        return self.ffn.act, False, -1  # the FFN's activation output (B, T, ffn_mult*D); units last

    def attention(self) -> SelfAttention:
        return self.attn

    def forward(self, x: Tensor) -> Tensor:  # (B, T, D) -> (B, T, D)
        if self.pre:
            x = x + self.attn(self.norm1(x))
            return x + self.ffn(self.norm2(x))
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.ffn(x))


class Transformer(nn.Module):
    """Input (B, T, F) features (one-hot tokens included); output (B, readout_steps, num_outputs)."""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, depth: int, width: int,
                 residual: bool, activation: str, norm: str, readout_steps: int = 0, heads: int = 4,
                 norm_position: str = "pre", ffn_mult: int = 4, causal: bool = False) -> None:
        super().__init__()
        if residual:
            raise ValueError("Transformer: residual=True is only supported for mlp and cnn (its blocks always are)")
        if len(input_shape) != 2:
            raise ValueError(f"Transformer needs sequence inputs (T, F), got input_shape {tuple(input_shape)}")
        check_positive("depth", depth)
        check_positive("width", width)
        check_positive("readout_steps", readout_steps)
        check_transformer(width, heads, norm_position, ffn_mult, norm, causal)
        length, features = input_shape
        if readout_steps > length:
            raise ValueError(f"readout_steps {readout_steps} exceeds sequence length {length}")
        self.readout_steps = readout_steps
        self.embed = nn.Linear(features, width)
        self.register_buffer("positions", sinusoidal(length, width), persistent=False)  # (T, D)
        self.layers = nn.ModuleList(
            TransformerBlock(width, heads, ffn_mult, activation, norm, norm_position, causal) for _ in range(depth))
        final = make_norm(norm, width, "sequence") if norm_position == "pre" else nn.Identity()
        self.head = nn.Sequential(final, nn.Linear(width, num_outputs))  # pre-LN's final norm is head.0

    def watched_layers(self) -> list[tuple[str, nn.Module]]:
        return numbered_blocks(self.layers)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, F) -> (B, k, num_outputs)
        h = self.embed(x) + self.positions[: x.shape[1]]
        for layer in self.layers:
            h = layer(h)
        return self.head(h[:, -self.readout_steps:])  # (B, k, D) -> (B, k, C)
