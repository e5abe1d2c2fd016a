"""How a per-time-step profile (a logged list such as bptt_grad_norm/layers.0 = [||dL/dh_t|| for t]) is shown
in TensorBoard: a few positions as scalars, the first/last ratio, and a time x training-step heatmap."""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # headless: figures are rendered to TensorBoard images only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

N_POSITIONS = 5  # t = 0, T/4, T/2, 3T/4, T-1


def positions(length: int) -> list[int]:
    return sorted({round(i * (length - 1) / (N_POSITIONS - 1)) for i in range(N_POSITIONS)}) if length > 1 else [0]


def profile_scalars(tag: str, profile: list[float]) -> dict[str, float]:
    """`<tag>/t=<t>` at a few positions and `<tag>/first_over_last` = profile[0] / profile[-1]
    (how much of the gradient at the last step survives back to the first; NaN when the last is 0)."""
    scalars = {f"{tag}/t={t}": profile[t] for t in positions(len(profile))}
    last = profile[-1]
    scalars[f"{tag}/first_over_last"] = profile[0] / last if last else math.nan
    return scalars


def heatmap_figure(tag: str, steps: list[int], profiles: list[list[float]]):
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
