"""A small figure and a table for one preset sweep, from its run folders (summary.json + event files).

    python scripts/preset_figure.py multirun/<date>/<time> docs/img/he2015.png [first|last]

Stand-in until `gradexp report` draws these: MLP/CNN sweeps plot each run's act_grad_norm per layer at the first
(default; theory dashed where summary["theory"] exists) or the last logged step; recurrent sweeps plot grad_norm/total and loss/train over steps."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from gradexp.flow import first_last_ratio, per_layer_gain  # noqa: E402


def runs(sweep: Path) -> list[tuple[str, dict, Path]]:
    """(label, summary, run folder) per job, in job order; the label is the job's sweep overrides."""
    found = []
    for path in sorted(sweep.glob("*/summary.json"), key=lambda p: int(p.parent.name.split("_")[0])):
        summary = json.loads(path.read_text())
        label = " ".join(o for o in summary["overrides"] if not o.startswith("+experiment") and "hydra" not in o)
        found.append((label, summary, path.parent))
    return found


def scalars(run_dir: Path, tag: str) -> tuple[list[int], list[float]]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    events = acc.Scalars(tag) if tag in acc.Tags()["scalars"] else []
    return [e.step for e in events], [e.value for e in events]


def table(found) -> str:
    lines = ["| run | status | acc/val | loss/val | gain, step 0 | first/last layer, step 0 | theory gain "
             "(measured, middle layers) | gain, last step |", "|---|---|---|---|---|---|---|---|"]
    cell = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for label, s, _ in found:
        norms = [layer.get("act_grad_norm", {}).get("first") for layer in s["layers"]]
        last = per_layer_gain([layer.get("act_grad_norm", {}).get("last") for layer in s["layers"]])
        t = s.get("theory") or {}
        theory = f"{t['predicted_gain']:.3f} ({t['measured_gain']:.3f})" if t else "-"
        lines.append(f"| {label} | {s['status']} | {cell(s['final'].get('acc/val'), '.3f')} | "
                     f"{cell(s['final'].get('loss/val'), '.3g')} | {cell(per_layer_gain(norms), '.3f')} | "
                     f"{cell(first_last_ratio(norms), '.2e')} | {theory} | {cell(last, '.3f')} |")
    return "\n".join(lines)


def figure(found, out: Path, when: str = "first") -> None:
    per_layer = len(found[0][1]["layers"]) >= 3
    fig, axes = plt.subplots(1, 1 if per_layer else 2, figsize=(6.4 if per_layer else 9, 3.6), squeeze=False)
    for i, (label, s, run_dir) in enumerate(found):
        color = f"C{i % 10}"
        if per_layer:
            norms = [layer.get("act_grad_norm", {}).get(when) for layer in s["layers"]]
            axes[0, 0].semilogy(range(len(norms)), norms, "o-", ms=3, color=color, label=label)
            if s.get("theory") and when == "first":
                predicted = [v["predicted"] for v in s["theory"]["per_layer"].values()]
                axes[0, 0].semilogy(range(len(predicted)), predicted, "--", color=color, lw=1)
        else:
            for ax, tag in zip(axes[0], ("grad_norm/total", "loss/train")):
                ax.semilogy(*scalars(run_dir, tag), color=color, label=label)
                ax.set_xlabel("step")
                ax.set_title(tag)
    if per_layer:
        axes[0, 0].set_xlabel("hidden layer (input side left)")
        axes[0, 0].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        axes[0, 0].set_title("act_grad_norm at step 0 (dashed: mean-field theory)" if when == "first"
                             else "act_grad_norm at the last step")
    axes[0, -1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out, dpi=72)


if __name__ == "__main__":
    sweep, out = Path(sys.argv[1]), Path(sys.argv[2])
    found = runs(sweep)
    print(table(found))
    figure(found, out, sys.argv[3] if len(sys.argv) > 3 else "first")
