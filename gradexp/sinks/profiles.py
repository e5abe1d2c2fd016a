"""How a per-time-step profile (a logged list such as bptt_grad_norm/layers.0 = [||dL/dh_t|| for t]) is shown
in TensorBoard: a few positions as scalars and the first/last ratio; the time x training-step heatmap is
drawn by gradexp.sinks.figures.time_heatmap when the run closes."""
from __future__ import annotations

import math

N_POSITIONS = 5  # t = round(k (T-1) / 4), k = 0..4: T=100 gives 0, 25, 50, 74, 99 (round half to even)


def positions(length: int) -> list[int]:
    return sorted({round(i * (length - 1) / (N_POSITIONS - 1)) for i in range(N_POSITIONS)}) if length > 1 else [0]


def profile_scalars(tag: str, profile: list[float]) -> dict[str, float]:
    """`<tag>/t=<t>` at a few positions and `<tag>/first_over_last` = profile[0] / profile[-1]
    (how much of the gradient at the last step survives back to the first; inf when the last is 0: a zero
    denominator is reported as such, never as NaN)."""
    scalars = {f"{tag}/t={t}": profile[t] for t in positions(len(profile))}
    last = profile[-1]
    scalars[f"{tag}/first_over_last"] = profile[0] / last if last else math.inf
    return scalars
