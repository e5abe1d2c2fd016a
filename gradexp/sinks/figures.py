"""Matplotlib figures of gradient flow, shared by the TensorBoard images and `gradexp report`.
Imported lazily (matplotlib takes ~0.5 s to load) and always on the Agg backend: no display needed."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

LABEL = {"act_grad_norm": "‖∂L/∂h‖ (activation gradient)", "grad_norm": "‖∂L/∂θ‖ (layer parameters)"}


def _positive(values) -> np.ndarray:
    """Non-finite and non-positive norms become NaN so a log scale leaves them blank."""
    arr = np.asarray(values, dtype=float)
    return np.where(np.isfinite(arr) & (arr > 0), arr, np.nan)


def profiles(ax, series: dict[str, Sequence[float]], colours: Optional[dict[str, str]] = None) -> None:
    """One log-scale line per run on a shared axis: label -> norm per hidden layer."""
    for label, norms in series.items():
        ax.semilogy(range(len(norms)), _positive(norms), marker=".", label=label,
                    color=(colours or {}).get(label))
    ax.set_xlabel("hidden layer (forward order)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, which="both", alpha=0.3)


def phase(ax, rows: list[str], cols: list[str], gains: dict[tuple[str, str], Optional[float]], labels: dict,
          what: str = "per-layer gain", texts: Optional[dict] = None) -> None:
    """Factor x factor grid coloured by log10(gain), `what` the gain is: blue vanishing, white 1, red exploding.
    Each cell reads texts[cell] (default: the gain) over labels[cell]."""
    data = np.full((len(rows), len(cols)), np.nan)
    for (r, c), gain in gains.items():
        if gain is not None and gain > 0 and math.isfinite(gain):
            data[rows.index(r), cols.index(c)] = math.log10(gain)
    limit = max(0.1, float(np.nanmax(np.abs(data))) if np.isfinite(data).any() else 0.1)
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="lightgrey")  # runs without a gain, cells not swept
    image = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=-limit, vmax=limit, aspect="auto")
    for (r, c), gain in gains.items():
        value = data[rows.index(r), cols.index(c)]
        text = (texts or {}).get((r, c)) or ("n/a" if gain is None else f"×{gain:.2g}")
        colour = "white" if np.isfinite(value) and abs(value) > 0.6 * limit else "black"
        ax.text(cols.index(c), rows.index(r), f"{text}\n{labels.get((r, c), '')}", ha="center", va="center",
                fontsize=9, color=colour)
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    plt.colorbar(image, ax=ax, label=f"log10 {what}")


def time_heatmap(tag: str, steps: list[int], profiles: list[list[float]]):
    """Rows: time step t (0 at the top); columns: training steps; colour: log10 of the norm."""
    grid = np.array(profiles, dtype=float).T  # (T, n_logged)
    grid = np.where(np.isfinite(grid) & (grid > 0), grid, np.nan)  # log colour: zeros and NaN left blank
    fig, ax = plt.subplots(figsize=(6, 4))
    finite = grid[np.isfinite(grid)]
    norm = LogNorm(vmin=finite.min(), vmax=finite.max()) if finite.size else None
    image = ax.imshow(grid, aspect="auto", interpolation="nearest", norm=norm,
                      extent=(-0.5, len(steps) - 0.5, grid.shape[0] - 0.5, -0.5))
    ax.set_xticks(range(len(steps)), [str(s) for s in steps], rotation=90 if len(steps) > 8 else 0, fontsize=7)
    ax.set_xlabel("training step")
    ax.set_ylabel("time step t")
    ax.set_title(tag, fontsize=9)
    fig.colorbar(image, ax=ax, label="||dL/dh_t||")
    fig.tight_layout()
    return fig
