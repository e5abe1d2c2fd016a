"""The TensorBoard images of gradient flow, drawn on scales that are the same in every run, so a sweep's images can be
compared side by side: each layer's gradient norm relative to the last hidden layer's, log10, on a fixed diverging
colour scale (white = level, blue = vanished toward the input, red = exploded), and the profile on at least
RANGE_DECADES decades (a healthy run looks flat instead of being stretched over its own small range)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from matplotlib.ticker import FuncFormatter, NullFormatter

from gradexp.sinks.figures import LABEL, MaxNLocator, _positive, plt

LIMIT = 8.0          # colour scale: log10 ratios from -8 to +8 (beyond: the end colours)
RANGE_DECADES = 4.0  # the profile's y axis spans at least this many decades
LOG10_SMALLEST, LOG10_LARGEST = -323.3, 308.25  # log10 of float64's smallest subnormal (4.9e-324) and largest value


def relative_log10(grid: Sequence[Sequence[float]]) -> np.ndarray:
    """(layers, steps) norms -> log10(norm / norm of the last layer at that step); NaN where undefined."""
    data = _positive(grid)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.log10(data / data[-1:, :])


def heatmap(grid: Sequence[Sequence[float]], steps: Sequence[int], quantity: str):
    """Layer 0 at the bottom; one column per logged step."""
    data = relative_log10(grid)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=80)
    image = ax.imshow(data, aspect="auto", origin="lower", cmap="RdBu_r", vmin=-LIMIT, vmax=LIMIT,
                      interpolation="nearest", extent=(-0.5, len(steps) - 0.5, -0.5, len(data) - 0.5))
    ticks = np.linspace(0, len(steps) - 1, num=min(len(steps), 8)).round().astype(int)
    ax.set_xticks(ticks, [str(steps[i]) for i in ticks])
    ax.set_xlabel("training step")
    ax.set_ylabel("hidden layer")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"gradient flow: {LABEL.get(quantity, quantity)}, relative to the last layer")
    fig.colorbar(image, ax=ax, label="log10(norm / last layer's)  (blue: vanished)")
    fig.tight_layout()
    return fig


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def decade(value: float, _position: int = 0) -> str:
    """A log axis's tick label, 10⁻³, as plain text. matplotlib's own is typeset as math: parsing it cost a third of
    this figure's time (~35 ms, and ~50 ms more for the parser's set-up in a fresh process), a share of every short
    run and sweep job, which draws it when it ends. Ticks between decades are left unlabelled."""
    exponent = math.log10(value) if value > 0 else math.nan
    if not math.isfinite(exponent) or abs(exponent - round(exponent)) > 1e-6:
        return ""
    return "10" + str(round(exponent)).translate(_SUPERSCRIPT)


def profile(norms: Sequence[float], quantity: str, step: int):
    """Norm per hidden layer at one step, log y axis spanning at least RANGE_DECADES decades."""
    values = _positive(norms)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=80)
    ax.semilogy(range(len(values)), values, marker="o")
    finite = values[np.isfinite(values)]
    if finite.size:
        low, high = np.log10(finite.min()), np.log10(finite.max())
        pad = max(0.0, RANGE_DECADES - (high - low)) / 2
        # within float64's range: a norm near its largest value (or its smallest subnormal) would otherwise make
        # limits of inf (or 0), which matplotlib refuses, and the run's end-of-run images with them
        ax.set_ylim(10 ** max(low - pad - 0.1, LOG10_SMALLEST), 10 ** min(high + pad + 0.1, LOG10_LARGEST))
    ax.yaxis.set_major_formatter(FuncFormatter(decade))
    ax.yaxis.set_minor_formatter(NullFormatter())  # >= RANGE_DECADES decades: matplotlib labels no minor tick either
    ax.set_xlabel("hidden layer (forward order)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(LABEL.get(quantity, quantity))
    ax.set_title(f"per-layer gradient at step {step}")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig
