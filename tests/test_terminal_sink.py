"""The progress bar takes logged steps at most every SHOW_EVERY seconds; what it shows at the end is the last one's."""
import io

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
