"""report.png: the per-layer gradient profiles of every run on one log-scale chart (at step 0 and at the last
logged step; dashed: the mean-field prediction where summary["theory"] has one), for recurrent runs the
per-time-step profiles ||dL/dh_t|| (summary["bptt"]) on a second row, and, when exactly two factors vary, the
phase diagram factor x factor coloured by the verdict's per-layer gain (per-time-step gain when no run has a
per-layer one), each cell reading the gain at step 0 and at the last logged step. The PNG carries the text
Software = "gradexp report" (output.SOFTWARE): a later report recognises it as its own to replace."""
from __future__ import annotations

import math
from typing import Optional

from gradexp.report.output import SOFTWARE, stage
from gradexp.report.runs import RunRecord

WHEN = {"first": "step 0", "last": "last logged step"}
TIME_LABEL = "‖∂L/∂h_t‖ (hidden-state gradient)"
DPI = 90
LEGEND_MAX = 60  # legend entries drawn at most: 10 rows of 6 below the charts
# norms outside it are drawn at its edge (report.csv keeps them): a forged summary's 1e-300 … 1e300 overflowed the log
# axis's margins in matplotlib (RuntimeWarning: overflow encountered in exp), and the axis fell back to 1 … 10
PLOT_RANGE = (1e-200, 1e200)
BEYOND = " (norms beyond 1e±200 at the edge)"


def draw(records: list[RunRecord], keys: list[str], path: str, dpi: int = DPI, phase: bool = True) -> Optional[str]:
    """Write the figure for `path` at `dpi` dots per inch (12 x 6 inches per row, 17 wide with the phase
    diagram) into a temporary file beside it, whole or not at all, and return that file's name: the caller renames
    it into place together with report.csv (output.commit). None when no run has per-layer or per-time-step
    measurements to draw."""
    fig = figure(records, keys, dpi, phase)
    if fig is None:
        return None
    from gradexp.sinks.figures import plt

    try:
        return stage(path, lambda f: fig.savefig(f, format="png", metadata={"Software": SOFTWARE}), binary=True)
    finally:
        plt.close(fig)


def drawable(records: list[RunRecord]) -> bool:
    """Whether draw() has anything to draw (decides, before anything is written, whether report.png is)."""
    return any(r.profile or r.time_profile for r in records)


def figure(records: list[RunRecord], keys: list[str], dpi: int = DPI, phase: bool = True):
    """The matplotlib figure (axes named layer_first/last, time_first/last, phase), or None. `phase`: whether a phase
    diagram may be drawn (off for runs of several sweeps, whose factors do not form one grid)."""
    rows = [axis for axis, has in (("layer", any(r.profile for r in records)),
                                   ("time", any(r.time_profile for r in records))) if has]  # drawable()
    if not rows:
        return None
    from gradexp.sinks import figures  # matplotlib (Agg) only when a figure is drawn

    phase = phase and len(keys) == 2
    mosaic = [[f"{axis}_first", f"{axis}_last"] + (["phase"] if phase else []) for axis in rows]
    fig, axes = figures.plt.subplot_mosaic(mosaic, figsize=(17 if phase else 12, 6 * len(rows)), dpi=dpi,
                                           layout="constrained")
    colours = {r.path: figures.plt.cm.tab10(i % 10) for i, r in enumerate(records)}
    labels = {r.path: _label(r, keys) for r in records}
    if "layer" in rows:
        _layers(axes, records, labels, colours, figures)
    if "time" in rows:
        _times(axes, records, labels, colours, figures)
    handles = {h.get_label(): h for ax in axes.values() for h in ax.get_legend_handles_labels()[0]}
    if len(handles) > LEGEND_MAX:  # a legend that long would cover the charts (and ten colours name no run there)
        fig.suptitle(f"{len(handles)} runs: too many to name here; report.csv names each", fontsize=9)
    else:  # many runs: more, smaller columns, so the legend stays below the charts instead of pushing them off
        ncol = min(len(handles), 3 if len(handles) <= 9 else 4 if len(handles) <= 24 else 6)
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=ncol,
                   fontsize=8 if len(handles) <= 24 else 6)
    if phase:
        _phase(axes["phase"], records, keys, figures)
    return fig


def _layers(axes, records, labels, colours, figures) -> None:
    measured = [r for r in records if r.profile]
    for when in ("first", "last"):
        ax = axes[f"layer_{when}"]
        figures.profiles(ax, {labels[r.path]: plottable(r.profile[when]) for r in measured},
                         {labels[r.path]: colours[r.path] for r in measured})
        ax.set_title(f"per-layer gradient at {WHEN[when]}" + _beyond([r.profile[when] for r in measured]))
        ax.set_ylabel(figures.LABEL.get(measured[0].quantity, "gradient norm"))
    predicted = [r for r in measured if r.theory_profile]
    for r in predicted:  # theory is for step 0 only: the prediction is at initialization
        axes["layer_first"].semilogy(range(len(r.theory_profile)), plottable(r.theory_profile), "--", lw=1,
                                     color=colours[r.path])
    if predicted:
        axes["layer_first"].plot([], [], "--", lw=1, color="grey", label="mean-field theory")
        beyond = _beyond([r.profile["first"] for r in measured] + [r.theory_profile for r in predicted])
        axes["layer_first"].set_title(f"per-layer gradient at {WHEN['first']} (dashed: mean-field theory){beyond}")
    axes["layer_last"].sharey(axes["layer_first"])


def _times(axes, records, labels, colours, figures) -> None:
    """One line per recurrent run: ||dL/dh_t|| against t (forward order; the loss reads the last steps)."""
    measured = [r for r in records if r.time_profile]
    for when in ("first", "last"):
        ax = axes[f"time_{when}"]
        shown = [r for r in measured if when in r.time_profile]
        if when == "last":  # a run stopped before its second bptt step (diverged early) has nothing newer to show
            shown = [r for r in shown if r.time_steps.get("last") != r.time_steps.get("first")]
        figures.profiles(ax, {labels[r.path]: plottable(r.time_profile[when]) for r in shown},
                         {labels[r.path]: colours[r.path] for r in shown})
        steps = sorted({r.time_steps.get(when) for r in shown} - {None})
        at = f"step {steps[0]}" if len(steps) == 1 else WHEN[when]
        ax.set_title(f"gradient through time at {at}" + _beyond([r.time_profile[when] for r in shown]))
        ax.set_xlabel("time step t (forward order)")
        ax.set_ylabel(TIME_LABEL)
    axes["time_last"].sharey(axes["time_first"])


def plottable(norms: list[float]) -> list[float]:
    """`norms` with the positive finite ones moved into PLOT_RANGE; the others stay (drawn blank on a log axis)."""
    low, high = PLOT_RANGE
    return [min(max(v, low), high) if v > 0 and math.isfinite(v) else v for v in norms]


def _beyond(series: list[list[float]]) -> str:
    """BEYOND where plottable() moves any of these norms, so the chart says so; else ''."""
    return BEYOND if any(v != p for norms in series for v, p in zip(norms, plottable(norms)) if v == v) else ""


def _label(r: RunRecord, keys: list[str]) -> str:
    """The run's own values of the varying factors (runs of another sweep lack some: those are left out)."""
    shown = " ".join(f"{k}={r.overrides[k]}" for k in keys if k in r.overrides) or r.path
    return literal(f"{shown} [{_verdict(r)}]")


def _verdict(r: RunRecord) -> str:
    """The verdict's label, or the status where there is none (a label may be null in an untrusted summary)."""
    return str(r.verdict.get("label") or r.status)


def literal(text: str) -> str:
    """`text` as matplotlib should show it: it reads $…$ as math, and a value from a run folder such as
    'lr=$\\frac{$' would not parse (savefig raises)."""
    return text.replace("$", r"\$")


def _phase(ax, records: list[RunRecord], keys: list[str], figures) -> None:
    """Rows: values of the first varying key, columns: the second; cell colour: log10 of the per-layer gain
    (of the per-time-step gain when no run has a per-layer one, e.g. single-layer recurrent nets)."""
    first, second = keys
    through_time = all(r.gain is None for r in records) and any(r.time_gain is not None for r in records)
    rows = list(dict.fromkeys(literal(r.overrides.get(first, "")) for r in records))
    cols = list(dict.fromkeys(literal(r.overrides.get(second, "")) for r in records))
    cells = {(literal(r.overrides.get(first, "")), literal(r.overrides.get(second, ""))): r for r in records}
    gains = {cell: r.time_gain if through_time else r.gain for cell, r in cells.items()}
    verdicts = {cell: literal(_verdict(r)) for cell, r in cells.items()}
    texts = {cell: _gains_text(r.time_gains if through_time else r.gains) for cell, r in cells.items()}
    figures.phase(ax, rows, cols, gains, verdicts, "per-time-step gain" if through_time else "per-layer gain", texts)
    ax.set_ylabel(literal(first))
    ax.set_xlabel(literal(second))
    ax.set_title(f"trainability map: per-{'time-step' if through_time else 'layer'} gain (step 0 → last)")


def _gains_text(gains: dict[str, Optional[float]]) -> str:
    """'×0.59 → ×0.92' (step 0, last logged step): what training did to the gain; '' leaves the default."""
    first, last = gains.get("first"), gains.get("last")
    if first is None or last is None:
        return ""
    return f"×{first:.2g} → ×{last:.2g}"
