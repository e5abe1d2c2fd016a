"""gradexp/cli/stack.py: the training stack is imported with the garbage collector paused, then frozen, once."""
from __future__ import annotations

import gc
import subprocess
import sys

import pytest

from gradexp.cli import stack


@pytest.fixture
def probe_module(tmp_path, monkeypatch):
    """A module that records, as it is imported, whether the collector runs; stands in for the training stack."""
    (tmp_path / "stack_probe.py").write_text("import gc\nCOLLECTOR_ON = gc.isenabled()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(stack, "TRAINING_STACK", ("stack_probe",))
    frozen: list[int] = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(1))
    yield frozen
    sys.modules.pop("stack_probe", None)


@pytest.mark.parametrize("enabled", [True, False])
def test_imported_with_the_collector_paused_then_frozen_once(probe_module, enabled):
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        stack.import_training_stack()
        assert sys.modules["stack_probe"].COLLECTOR_ON is False
        assert gc.isenabled() is enabled  # as it was before: a collector the caller turned off stays off
        stack.import_training_stack()  # imported already: nothing to pause, nothing new to freeze
        assert probe_module == [1]
    finally:
        (gc.enable if was else gc.disable)()


def test_a_failing_import_turns_the_collector_back_on(probe_module, monkeypatch):
    monkeypatch.setattr(stack, "TRAINING_STACK", ("stack_probe", "no_such_module_here"))
    with pytest.raises(ModuleNotFoundError):
        stack.import_training_stack()
    assert gc.isenabled() and probe_module == []


@pytest.mark.slow
def test_no_full_collection_while_torch_is_imported():
    """The real stack, in a fresh interpreter: before, six full collections ran over torch's objects in a default run."""
    code = ("import gc, sys\nfull = []\ngc.callbacks.append(lambda phase, info: full.append(1) "
            "if phase == 'start' and info['generation'] == 2 else None)\n"
            "from gradexp.cli.stack import import_training_stack\nimport_training_stack()\n"
            "print(len(full), 'torch' in sys.modules, gc.isenabled(), gc.get_freeze_count() > 100000)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["0", "True", "True", "True"]


@pytest.mark.slow
def test_bench_startup_script_times_every_command():
    """scripts/bench_startup.py runs each command as a user does: the helps, a refusal (exit 2), a default run."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_startup.py"
    out = subprocess.run([sys.executable, str(script), "--repeats", "1"], capture_output=True, text=True, check=True,
                         timeout=300).stdout
    lines = {line.split(":")[0]: line for line in out.splitlines()[1:]}
    assert lines["gradexp --help"].endswith("imports torch: False")
    assert lines["gradexp run --help"].endswith("imports torch: False")
    assert lines["gradexp run train.steps=-3 (refused, exit 2)"].endswith("imports torch: False")
    assert lines["gradexp run (the default experiment)"].endswith("imports torch: True")


def test_someone_elses_process_imports_plainly(probe_module):
    """freeze=False (main(argv) called in a user's process): a plain import, nothing paused, nothing frozen."""
    stack.import_training_stack(freeze=False)
    assert sys.modules["stack_probe"].COLLECTOR_ON is True and probe_module == []


def test_main_with_argv_runs_in_the_callers_process_without_freezing(tmp_path, monkeypatch, capsys):
    """`main(["run", ...])` in a caller's process trains as `gradexp run` does but freezes nothing of the caller's;
    the console script (main() without argv) and a launcher's worker process own theirs."""
    from gradexp.cli import app, main as cli

    asked: list[bool] = []
    monkeypatch.setattr(stack, "import_training_stack", lambda *more, freeze=True: asked.append(freeze))
    monkeypatch.setattr(cli, "owns_process", False)
    args = ["run", "train.steps=2", "model.width=8", "log.every=1", f"hydra.run.dir={tmp_path / 'run'}"]
    assert cli.main(args) == 0
    assert asked == [False] and (tmp_path / "run" / "summary.json").is_file()
    monkeypatch.setattr(cli, "owns_process", True)
    assert app._owns_process()
    monkeypatch.setattr(cli, "owns_process", False)
    monkeypatch.setattr(app, "_app_pid", -1)  # a worker: the task runs in a process run_app did not start
    assert app._owns_process()


def test_a_signal_during_the_stack_import_stops_before_the_run(tmp_path, monkeypatch, capsys):
    """The stack's import is most of start-up (~0.8 s): a Ctrl-C or SIGTERM meanwhile stops the run before it builds,
    loads data or writes anything but the summary that says so (status interrupted, 0 steps), and says where the
    folder is and how to continue it."""
    import json
    import os
    import signal

    from gradexp.cli import main as cli

    monkeypatch.setattr(stack, "import_training_stack", lambda *more, freeze=True: os.kill(os.getpid(), signal.SIGTERM))
    run = tmp_path / "run"
    assert cli.main(["run", "train.steps=50", f"hydra.run.dir={run}"]) == 143
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["status"], summary["steps"]) == ("interrupted", 0)
    assert not list(run.glob("events.out.tfevents.*")) and not (run / "checkpoint.pt").exists()
    said = capsys.readouterr().err
    assert "interrupted before the first step" in said and f"resume with: gradexp run resume={run}" in said


@pytest.mark.parametrize("model, stack_first", [([], False), (["model=custom", "model._target_=torch.nn.Linear"], True)])
def test_the_stack_comes_first_only_where_checking_imports_torch_anyway(tmp_path, monkeypatch, model, stack_first):
    """A bad value of gradexp's own models is refused before the stack's import; checking a custom model imports the
    user's class (torch with it), so there the stack comes first, with the collector paused."""
    from gradexp.cli import app, main as cli
    from gradexp.config.schema import ConfigError

    order: list[str] = []
    monkeypatch.setattr(stack, "import_training_stack", lambda *more, freeze=True: order.append("stack"))

    def refuse(cfg):
        order.append("validate")
        raise ConfigError("train.steps", -3, "an integer >= 1")

    monkeypatch.setattr(app, "validate", refuse)
    assert cli.main(["run", *model, "train.steps=-3", f"hydra.run.dir={tmp_path / 'run'}"]) == 2
    assert order == (["stack", "validate"] if stack_first else ["validate"])
