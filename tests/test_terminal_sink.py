"""The progress bar takes logged steps at most every SHOW_EVERY seconds; what it shows at the end is the last one's."""
import io
import os

from rich.console import Console

from gradexp.outcome import Outcome
from gradexp.sinks import terminal
from gradexp.sinks.terminal import TerminalSink


def test_the_bar_ends_on_the_last_logged_step(tmp_path, monkeypatch):
    monkeypatch.setattr(terminal, "SHOW_EVERY", 1e9)  # every log() after the first is only kept
    out = io.StringIO()
    sink = TerminalSink(50, str(tmp_path), console=Console(file=out, width=120, force_terminal=False))
    for step in range(40):
        sink.log(step, {"loss/train": 1.0 + step, "grad_norm/total": 100.0 + step})
    sink.log(40, {"loss/val": 0.5})  # an evaluation-only step keeps the bar's loss
    task = sink.progress.tasks[0]
    assert task.completed == 1 and task.fields["loss"] == "1"  # only the first step reached the bar so far
    sink.close(Outcome(status="completed", steps=50))
    assert task.completed == 50 and task.fields["loss"] == "40" and task.fields["grad"] == "139"


def test_a_short_run_ends_with_its_speed_on_the_bar(tmp_path):
    """rich has no speed for a bar updated only once: a short run's bar read "- steps/s" to the end."""
    out = io.StringIO()
    sink = TerminalSink(3, str(tmp_path), console=Console(file=out, width=120, force_terminal=False))
    sink.log(0, {"loss/train": 1.0})
    sink.close(Outcome(status="completed", steps=3, perf={"steps_per_s": 123.4}))
    assert sink.progress.tasks[0].fields["speed"] == "123"
    assert "123 steps/s" in out.getvalue() and "- steps/s" not in out.getvalue()


def _rendered(verdict: dict, width: int = 80) -> list[str]:
    out = io.StringIO()
    Console(file=out, width=width, force_terminal=False).print(terminal.verdict_panel(verdict))
    return out.getvalue().splitlines()


def test_a_cause_too_long_for_the_title_moves_into_the_box_whole():
    """rich cuts a title at the box's edge mid-word; a cause that does not fit 80 columns opens the box instead."""
    short = _rendered({"label": "vanishing", "cause": "dead units (relu)", "evidence": "e"})
    assert short[0].startswith("╭─ vanishing — dead units (relu) ─")
    cause = "a cause of many words that will not fit in the title of an eighty-column box"
    lines = _rendered({"label": "vanishing", "cause": cause, "evidence": "the evidence"})
    assert lines[0].startswith("╭─ vanishing ─") and "cause" not in lines[0]
    assert " ".join(line.strip("│ ") for line in lines[1:3]).startswith(f"cause: {cause}"[:70])


def test_the_run_folder_is_named_from_where_the_user_ran_the_command_even_after_a_chdir(tmp_path, monkeypatch):
    """Found by an adversarial test: with hydra.job.chdir=true the job runs in its run folder, and the commands
    printed at the end said `tensorboard --logdir .` and `resume=.`, which fail from the user's shell."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from gradexp.sinks.terminal import _shortest

    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    monkeypatch.chdir(run)
    assert _shortest(str(run)) == "."  # no Hydra: the current directory is the user's
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))  # inside a Hydra job
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: OmegaConf.create({"runtime": {"cwd": str(tmp_path)}})))
    assert _shortest(str(run)) == os.path.join("runs", "a")
    assert _shortest(str(tmp_path.parent)) == str(tmp_path.parent)  # above it: absolute
