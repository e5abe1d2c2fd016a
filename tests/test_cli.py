"""The installed `gradexp` command as a user runs it (subprocesses: marked slow, except the instant --help)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_oracle import read_scalars

TINY = ["train.steps=6", "train.eval_every=3", "log.every=2", "model.width=8"]


def gradexp(*args: str, cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gradexp", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_top_level_help_lists_subcommands_without_torch(tmp_path):
    code = "import sys; from gradexp.cli.main import main; main(['--help']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    assert "run [OVERRIDES]" in out and "report PATH" in out
    assert out.strip().endswith("False")  # torch was never imported


def test_version_is_the_installed_one_without_torch(tmp_path):
    from importlib.metadata import version

    code = "import sys; from gradexp.cli.main import main; main(['--version']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    assert out.splitlines() == [f"gradexp {version('gradexp')}", "False"]
    code = code.replace("main(['--version'])", "main(['run', '--version'])")  # gradexp's, not Hydra's
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    assert out.splitlines() == [f"gradexp {version('gradexp')}", "False"]


def test_only_the_process_own_command_line_skips_the_final_collections(monkeypatch, capsys):
    """main() is the console script, which exits next: it freezes the garbage collector's objects (0.8 s of a
    default run's exit). main(argv), as tests and scripts call it, leaves the collector alone."""
    import gc

    from gradexp.cli import main as cli

    frozen: list[int] = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(1))
    assert cli.main(["--version"]) == 0 and frozen == []
    monkeypatch.setattr(sys, "argv", ["gradexp", "--version"])
    assert cli.main() == 0 and frozen == [1]
    assert capsys.readouterr().out.count("gradexp ") == 2


@pytest.mark.slow
def test_run_help_lists_the_groups_without_torch(tmp_path):
    """`gradexp run --help` builds no model, so torch (~1.4 s of imports on this machine) is never loaded."""
    code = ("import sys; from gradexp.cli.main import main\ntry: main(['run', '--help'])\nexcept SystemExit: pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    assert "activation: " in out and out.strip().endswith("False")


@pytest.mark.slow
@pytest.mark.parametrize("value", ["train.steps=-3", "optimizer.lr=0", "log.histograms_every=-3"])
def test_a_bad_value_is_refused_before_torch_is_imported(tmp_path, value):
    """The config's values are checked before the training stack's imports (~0.8 s, torch among them): a typo is
    refused in one line in ~0.3 s, and nothing is left behind."""
    code = (f"import sys; from gradexp.cli.main import main\ncode = main(['run', {value!r}, 'hydra.run.dir=run'])\n"
            "print(code, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert done.stdout.split() == ["2", "False"]
    assert done.stderr.count("\n") == 1 and value.split("=")[0] in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("status, resume", [("completed", False), ("interrupted", True)])
def test_closing_lines_keep_long_paths_whole_at_80_columns(tmp_path, monkeypatch, status, resume):
    """Piped output is 80 columns wide; the run folder, the tensorboard and the resume command stay one line each."""
    import io

    from rich.console import Console

    from gradexp.sinks.terminal import TerminalSink
    from gradexp.outcome import Outcome

    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "outputs" / ("a-long-folder-name-" * 4) / "2026-11-22" / "11-45-19-728958"
    out = io.StringIO()
    sink = TerminalSink(2, str(run_dir), console=Console(file=out, width=80))
    sink.close(Outcome(status=status, steps=2))
    relative = str(run_dir.relative_to(tmp_path))
    lines = out.getvalue().splitlines()
    assert f"run folder: {relative}" in lines and f"dashboards: tensorboard --logdir {relative}" in lines
    assert (f"resume with: gradexp run resume={relative}" in lines) == resume
    assert any(line.strip().startswith("gradient flow: its Flow/ charts") for line in lines)


def test_no_empty_gradexp_log_per_run():
    """gradexp logs nothing through Python's logging, so Hydra's per-job log file is not configured."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from gradexp.config.schema import register_schema

    register_schema()
    GlobalHydra.instance().clear()
    with initialize_config_module(version_base="1.3", config_module="gradexp.configs"):
        cfg = compose(config_name="config", return_hydra_config=True)
    handlers = cfg.hydra.job_logging.handlers
    assert handlers and not [h for h in handlers.values() if "filename" in h]


@pytest.mark.slow
def test_run_help_shows_every_group(tmp_path):
    from gradexp.config import registry

    out = gradexp("run", "--help", cwd=tmp_path).stdout
    groups = {"model": [*registry.MODELS, "custom"], "activation": registry.ACTIVATIONS, "init": registry.INITS,
              "norm": registry.NORMS, "optimizer": registry.OPTIMIZERS, "schedule": registry.SCHEDULES,
              "data": registry.DATA}  # every registry entry is an option Hydra lists (custom: the user's class)
    for group, options in groups.items():
        assert f"{group}: {', '.join(sorted(options))}" in out
    assert "clip: none, norm_0.5, norm_1.0, norm_5.0, value_0.1, value_1.0" in out


@pytest.mark.slow
def test_run_writes_events_and_summary_and_says_where(tmp_path):
    result = gradexp("run", "model=rnn", "clip=norm_1.0", "data.seq_len=10", *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dirs = [p.parent for p in tmp_path.glob("outputs/*/*/summary.json")]
    assert len(run_dirs) == 1
    assert not (run_dirs[0] / "gradexp.log").exists()  # no empty log file beside the results
    summary = json.loads((run_dirs[0] / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 6
    assert summary["overrides"][:2] == ["model=rnn", "clip=norm_1.0"]
    assert "grad_norm/total_clipped" in read_scalars(str(run_dirs[0]))
    assert f"tensorboard --logdir {run_dirs[0].relative_to(tmp_path)}" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("override", ["model.depth=0", "model.width=-1", "optimizer.lr=0", "clip.max_norm=-1",
                                      "train.steps=0", "device=cuda"])
def test_bad_value_is_one_line_and_exit_2(tmp_path, override):
    if override == "device=cuda" and _has_cuda():
        pytest.skip("CUDA present")
    result = gradexp("run", override, cwd=tmp_path)
    assert result.returncode == 2
    key = override.split("=")[0]
    assert result.stderr.strip().count("\n") == 0 and key in result.stderr and "allowed" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not list(tmp_path.glob("outputs/**/summary.json"))


@pytest.mark.slow
def test_unknown_option_lists_the_available_ones(tmp_path):
    result = gradexp("run", "model=resnet50", cwd=tmp_path)
    assert result.returncode == 2
    assert "Available options in 'model'" in result.stderr and "lstm" in result.stderr


@pytest.mark.slow
def test_multirun_gives_each_job_its_own_folder_and_events(tmp_path):
    result = gradexp("run", "-m", "activation=sigmoid,relu", *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summaries = sorted(tmp_path.glob("multirun/*/*/*/summary.json"))
    assert len(summaries) == 2
    sweep = summaries[0].parent.parent
    assert len({s.parent for s in summaries}) == 2
    for s in summaries:
        assert list(s.parent.glob("events.out.tfevents.*")), s.parent
    names = sorted(s.parent.name for s in summaries)
    assert "activation=sigmoid" in names[0] + names[1] and "activation=relu" in names[0] + names[1]
    assert sweep.is_dir()


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_main_with_argv_leaves_the_callers_environment_as_it_was(tmp_path, monkeypatch):
    """run_app sets HYDRA_FULL_ERROR for Hydra while it runs; a caller's later `gradexp` subprocesses inherited it and
    printed full tracebacks (exit 1) instead of gradexp's one line (exit 2)."""
    import os

    from gradexp.cli import main as cli

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    assert cli.main(["run", "train.steps=-3", f"hydra.run.dir={tmp_path / 'run'}"]) == 2
    assert "HYDRA_FULL_ERROR" not in os.environ
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    assert cli.main(["run", "train.steps=-3", f"hydra.run.dir={tmp_path / 'run'}"]) == 2
    assert os.environ["HYDRA_FULL_ERROR"] == "0"


@pytest.mark.slow
@pytest.mark.parametrize("args", [["run", "--help"], ["report", "{runs}", "--format", "json"],
                                  ["run", "--info", "searchpath"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path, args):
    """`gradexp run --help | head`, `gradexp report runs/ | head`: the pipe closes before the output is written; the
    command stops with Python's EPIPE status, no traceback and no 'Broken pipe' line (`--info`: no '--- Logging error
    ---' and call stack per line either, found by a new user's walkthrough)."""
    runs = tmp_path / "runs"
    for i in range(2):
        (runs / str(i) / ".hydra").mkdir(parents=True)
        (runs / str(i) / "summary.json").write_text(json.dumps({"schema_version": 1, "status": "completed"}))
    command = [sys.executable, "-m", "gradexp", *(a.format(runs=runs) for a in args)]
    reader, writer = os.pipe()
    os.close(reader)  # nobody will read: the first write meets a closed pipe
    done = subprocess.run(command, stdout=writer, stderr=subprocess.PIPE, text=True, cwd=tmp_path, timeout=240)
    os.close(writer)
    quiet = "Traceback" not in done.stderr and "Broken pipe" not in done.stderr and "Logging error" not in done.stderr
    # --info prints through logging, whose handler drops the failed write itself (so nothing is left to fail: 0)
    assert done.returncode == (0 if "--info" in args else 1) and quiet, done.stderr
