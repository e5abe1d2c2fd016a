"""report.png: the per-layer gradient profiles of every run on one log-scale chart (at step 0 and at the last
logged step), and, when exactly two factors vary, the phase diagram factor x factor coloured by per-layer gain."""
from __future__ import annotations

from typing import Optional

from gradexp.runs import RunRecord

WHEN = {"first": "step 0", "last": "last logged step"}


def draw(records: list[RunRecord], keys: list[str], path: str) -> Optional[str]:
    """Write the figure to `path`; None when no run has per-layer measurements to draw."""
    measured = [r for r in records if r.profile]
    if not measured:
        return None
    from gradexp.sinks import figures  # matplotlib (Agg) only when a figure is drawn

    plt = figures.plt
    phase = len(keys) == 2
    fig, axes = plt.subplots(1, 3 if phase else 2, figsize=(17 if phase else 12, 6), dpi=90, layout="constrained")
    labels = {r.path: _label(r, keys) for r in measured}
    colours = {labels[r.path]: plt.cm.tab10(i % 10) for i, r in enumerate(measured)}
    for ax, when in zip(axes, ("first", "last")):
        figures.profiles(ax, {labels[r.path]: r.profile[when] for r in measured}, colours)
        ax.set_title(f"per-layer gradient at {WHEN[when]}")
        ax.set_ylabel(figures.LABEL.get(measured[0].quantity, "gradient norm"))
    axes[1].sharey(axes[0])
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=min(3, len(measured)), fontsize=8)
    if phase:
        _phase(axes[2], records, keys, figures)
    fig.savefig(path)
    plt.close(fig)
    return path


def _label(r: RunRecord, keys: list[str]) -> str:
    shown = " ".join(f"{k}={r.overrides.get(k, '')}" for k in keys) or r.path
    return f"{shown} [{r.verdict.get('label', r.status)}]"


def _phase(ax, records: list[RunRecord], keys: list[str], figures) -> None:
    """Rows: values of the first varying key, columns: the second; cell colour: log10 of the per-layer gain."""
    first, second = keys
    rows = list(dict.fromkeys(r.overrides.get(first, "") for r in records))
    cols = list(dict.fromkeys(r.overrides.get(second, "") for r in records))
    cells = {(r.overrides.get(first, ""), r.overrides.get(second, "")): r for r in records}
    gains = {cell: r.gain for cell, r in cells.items()}
    verdicts = {cell: r.verdict.get("label", r.status) for cell, r in cells.items()}
    figures.phase(ax, rows, cols, gains, verdicts)
    ax.set_ylabel(first)
    ax.set_xlabel(second)
    ax.set_title("trainability map: per-layer gain")
