"""The terminal: a rich progress bar (step, loss, global grad norm, steps/s) and the closing lines."""
from __future__ import annotations

import math
import os
import shlex
import time
from typing import Optional, Sequence

from omegaconf import OmegaConf
from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.text import Text
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from gradexp.config.schema import names_users_class
from gradexp.outcome import Outcome

SHOW_EVERY = 0.1  # seconds between the bar's updates from logged steps (its own redraw interval)
STATUS_STYLE = {"completed": "green", "diverged": "red", "interrupted": "yellow", "failed": "red"}
# "two or more layers": a one-layer model draws no depth heatmap (found by a new user: model.depth=1 pointed at none)
FLOW_PAGES = ("  gradient flow: its Flow/ charts, Custom Scalars (one chart per layer), Images (heatmap, with two or more "
              "layers), HParams (verdict)")
VERDICT_STYLE = {"healthy": "green", "vanishing": "blue", "exploding": "red", "diverged": "magenta"}


class TerminalSink:
    def __init__(self, total_steps: int, run_dir: str, console: Optional[Console] = None,
                 overrides: Sequence[str] = (), options: Sequence[str] = (), sweep: bool = False):
        self.console = console or Console(stderr=True)
        # options: Hydra's command-line options of the run (--config-dir X), repeated in every command printed
        self.run_dir, self.overrides, self.options = run_dir, list(overrides), list(options)
        self.sweep = sweep  # a job of a sweep: the sweep's own command continues it, and the jobs not yet run
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("‖g‖ {task.fields[grad]}"),
            TextColumn("{task.fields[speed]} steps/s"),
            TimeRemainingColumn(), console=self.console, transient=False,
        )
        self.task_id = self.progress.add_task("train", total=total_steps, loss="-", grad="-", speed="-")
        self.fields: dict[str, float] = {}  # the latest loss and grad norm logged
        self.completed, self.shown = 0, -math.inf  # steps done as last logged; when the bar last took them
        self.progress.start()

    def log(self, step: int, values: dict[str, float]) -> None:
        """Keeps the step's fields; the bar takes them at most every SHOW_EVERY seconds (it redraws 10 times a
        second anyway). rich's speed averages over every update it was given, so updating it at every logging step
        of a fast run cost ~50 us a step (measured at 1000 steps/s)."""
        if "loss/train" in values:
            self.fields["loss"] = values["loss/train"]
        if "grad_norm/total" in values:
            self.fields["grad"] = values["grad_norm/total"]
        self.completed = step + 1
        now = time.monotonic()
        if now - self.shown >= SHOW_EVERY:
            self.shown = now
            self._show()

    def _show(self) -> None:
        fields = {}
        if "loss" in self.fields:
            fields["loss"] = f"{self.fields['loss']:.4g}"
        if "grad" in self.fields:
            fields["grad"] = f"{self.fields['grad']:.3g}"
        task = self.progress.tasks[0]
        if task.speed:
            fields["speed"] = f"{task.speed:.0f}"
        self.progress.update(self.task_id, completed=self.completed, **fields)

    def close(self, outcome: Outcome) -> None:
        self._show()  # the last logged step's fields
        speed = outcome.perf.get("steps_per_s", 0.0)
        # rich has no speed for a bar updated once or twice (a short run): the bar showed "- steps/s" to the end
        shown = {} if self.progress.tasks[0].speed else {"speed": f"{speed:.0f}"}
        self.progress.update(self.task_id, completed=outcome.steps, **shown)
        self.progress.stop()
        style = STATUS_STYLE.get(outcome.status, "white")
        self.console.print(f"[{style}]{outcome.status}[/] after {outcome.steps} steps ({speed:.0f} steps/s)")
        if outcome.verdict:
            self.console.print(verdict_panel(outcome.verdict))
            # outside the box, unwrapped: pasteable
            for line in command_lines(outcome.verdict, self.overrides, self.options):
                self.console.print(line, style="cyan", soft_wrap=True, markup=False, highlight=False)
        for line in closing_lines(outcome.status, self.run_dir, self.options, self.overrides, self.sweep):
            # soft_wrap: a path is never broken across lines, also at a pipe's 80 columns, so it stays copy-pasteable
            self.console.print(line, soft_wrap=True, highlight=False, markup=False)


def closing_lines(status: str, run_dir: str, options: Sequence[str] = (), overrides: Sequence[str] = (),
                  sweep: bool = False) -> list[str]:
    """Where the run is, how to look at it, and for an interrupted run the exact command that continues it (with the
    user's model class, which resuming takes only from the command line). A sweep's job is continued by the sweep's
    own command, which also runs the jobs an interrupt kept from starting."""
    logdir = shlex.quote(_shortest(run_dir))
    lines = [f"run folder: {logdir}", f"dashboards: tensorboard --logdir {logdir}", FLOW_PAGES]
    if status == "interrupted" and sweep:
        lines.append("resume with: the same gradexp run -m command (finished jobs are skipped, this one continues "
                     "from its checkpoint, and the jobs not yet run start)")
    elif status == "interrupted":
        again = "".join(shlex.quote(o) + " " for o in overrides if names_users_class(o))
        lines.append(f"resume with: {_gradexp_run(options)}resume={logdir} {again}".rstrip())
    return lines


TITLE_WIDTH = 74  # what a panel's title holds in an 80-column terminal (the box's corners and padding take 6)


def verdict_panel(verdict: dict) -> Panel:
    """The verdict as a boxed note: label (and cause) in the title, the label at initialisation and at the end,
    then the evidence. What to try follows below the box (command_lines)."""
    label, style = verdict["label"], VERDICT_STYLE.get(verdict["label"], "white")
    cause = verdict.get("cause") or ""
    fits = len(label) + len(cause) + 3 <= TITLE_WIDTH  # rich cuts a longer title at the box's edge, mid-word
    title = f"[bold {style}]{label}[/]" + (f" — {escape(cause)}" if cause and fits else "")
    parts = [Text(f"cause: {cause}", style="bold")] if cause and not fits else []
    parts += [Text(moments_line(verdict), style="bold")] if verdict.get("at_init") else []
    parts.append(Text(verdict["evidence"]))
    if verdict.get("theory"):  # mean-field theory does not cover this model: said, not silently left out
        parts.append(Text(verdict["theory"], style="dim"))
    if verdict.get("suggestions"):
        parts.append(Text("\ntry one of the commands below the box", style="bold"))
    return Panel(Group(*parts), title=title, title_align="left", border_style=style, expand=False)


def command_lines(verdict: dict, overrides: Sequence[str], options: Sequence[str] = ()) -> list[str]:
    """Each suggestion as a complete command line (the run's options and overrides plus the suggestion)."""
    return [command_line(overrides, fix, options) for fix in verdict.get("suggestions") or []]


def moments_line(verdict: dict) -> str:
    return f"at initialisation: {verdict['at_init']['label']} · at the end of training: {verdict['at_end']['label']}"


def command_line(overrides: Sequence[str], suggestion: str, options: Sequence[str] = ()) -> str:
    """`gradexp run` + the run's options + its overrides with the suggestion's keys replaced (Hydra refuses a key
    given twice), shell-quoted, ready to paste."""
    return _gradexp_run(options) + " ".join(shlex.quote(o) for o in merged_overrides(overrides, suggestion.split()))


def _gradexp_run(options: Sequence[str]) -> str:
    """`gradexp run ` and the run's options: a run composed from --config-dir X needs X again."""
    return " ".join(["gradexp run", *(shlex.quote(o) for o in options), ""])


def merged_overrides(overrides: Sequence[str], suggestion: Sequence[str]) -> list[str]:
    new = {_key(o) for o in suggestion}
    return [o for o in overrides if _key(o) not in new] + list(suggestion)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _shortest(path: str) -> str:
    """The run folder relative to the user's working directory when it lies below it, else absolute."""
    relative = os.path.relpath(path, _users_cwd())
    return os.path.abspath(path) if relative.startswith("..") else relative


def _users_cwd() -> str:
    """Where the user ran the command: Hydra's original working directory, which a job with hydra.job.chdir=true
    has left for its run folder (found by an adversarial test: the commands printed there said `resume=.`), else
    the current one."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        cwd = OmegaConf.select(HydraConfig.get(), "runtime.cwd", default=None)
        if isinstance(cwd, str) and os.path.isabs(cwd):
            return cwd
    return os.getcwd()
