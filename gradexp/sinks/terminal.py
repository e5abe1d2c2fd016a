"""The terminal: a rich progress bar (step, loss, global grad norm, steps/s) and the closing lines."""
from __future__ import annotations

import os
import shlex
from typing import Optional

from rich.console import Console, Group
from rich.panel import Panel
from rich.text import Text
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from gradexp.train import Outcome

STATUS_STYLE = {"completed": "green", "diverged": "red", "interrupted": "yellow", "failed": "red"}
FLOW_PAGES = "  gradient flow: its Flow/ charts, Custom Scalars (one chart per layer), Images (heatmap), HParams (verdict)"
VERDICT_STYLE = {"healthy": "green", "vanishing": "blue", "exploding": "red", "diverged": "magenta"}


class TerminalSink:
    def __init__(self, total_steps: int, run_dir: str, console: Optional[Console] = None):
        self.console = console or Console(stderr=True)
        self.run_dir = run_dir
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("‖g‖ {task.fields[grad]}"),
            TextColumn("{task.fields[speed]} steps/s"),
            TimeRemainingColumn(), console=self.console, transient=False,
        )
        self.task_id = self.progress.add_task("train", total=total_steps, loss="-", grad="-", speed="-")
        self.progress.start()

    def log(self, step: int, values: dict[str, float]) -> None:
        fields = {}
        if "loss/train" in values:
            fields["loss"] = f"{values['loss/train']:.4g}"
        if "grad_norm/total" in values:
            fields["grad"] = f"{values['grad_norm/total']:.3g}"
        task = self.progress.tasks[0]
        if task.speed:
            fields["speed"] = f"{task.speed:.0f}"
        self.progress.update(self.task_id, completed=step + 1, **fields)

    def close(self, outcome: Outcome) -> None:
        self.progress.update(self.task_id, completed=outcome.steps)
        self.progress.stop()
        style = STATUS_STYLE.get(outcome.status, "white")
        speed = outcome.perf.get("steps_per_s", 0.0)
        self.console.print(f"[{style}]{outcome.status}[/] after {outcome.steps} steps ({speed:.0f} steps/s)")
        if outcome.verdict:
            self.console.print(verdict_panel(outcome.verdict))
        for line in closing_lines(outcome.status, self.run_dir):
            # soft_wrap: a path is never broken across lines, also at a pipe's 80 columns, so it stays copy-pasteable
            self.console.print(line, soft_wrap=True, highlight=False, markup=False)


def closing_lines(status: str, run_dir: str) -> list[str]:
    """Where the run is, how to look at it, and for an interrupted run the exact command that continues it."""
    logdir = shlex.quote(_shortest(run_dir))
    lines = [f"run folder: {logdir}", f"dashboards: tensorboard --logdir {logdir}", FLOW_PAGES]
    if status == "interrupted":
        lines.append(f"resume with: gradexp run resume={logdir}")
    return lines


def verdict_panel(verdict: dict) -> Panel:
    """The verdict as a boxed note: label (and cause) in the title, evidence, then overrides to paste."""
    label, style = verdict["label"], VERDICT_STYLE.get(verdict["label"], "white")
    title = f"[bold {style}]{label}[/]" + (f" — {verdict['cause']}" if verdict.get("cause") else "")
    parts = [Text(verdict["evidence"])]
    if verdict.get("suggestions"):
        parts.append(Text("\ntry:", style="bold"))
        parts += [Text(f"  gradexp run ... {fix}", style="cyan") for fix in verdict["suggestions"]]
    return Panel(Group(*parts), title=title, title_align="left", border_style=style, expand=False)


def _shortest(path: str) -> str:
    """The run folder relative to the working directory when it lies below it, else absolute."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative
