"""The public Python API (gradexp/__init__.py): what a user imports to compose, build, train and read results."""
import json
import os
import subprocess
import sys

import pytest

import gradexp


def test_every_public_name_resolves_and_has_a_docstring():
    for name in gradexp.__all__:
        value = getattr(gradexp, name)
        if callable(value) and name != "__version__":
            assert value.__doc__, name


def test_import_gradexp_does_not_import_torch():
    code = "import sys, gradexp; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_version_is_the_installed_distributions():
    from importlib.metadata import version

    assert gradexp.__version__ == version("gradexp")


def test_compose_run_and_read_back(tmp_path):
    cfg = gradexp.compose(["train.steps=3", "model.depth=2", "model.width=8", "log.every=1"])
    outcome = gradexp.run_experiment(cfg, run_dir=str(tmp_path / "a"), overrides=["model.depth=2"],
                                     console=__import__("rich.console").console.Console(quiet=True))
    summary = gradexp.load_summary(str(tmp_path / "a"))
    assert summary["schema_version"] == gradexp.SCHEMA_VERSION
    assert summary["status"] == outcome.status == "completed" and summary["steps"] == 3
    assert summary["overrides"] == ["model.depth=2"]
    assert gradexp.find_runs(str(tmp_path)) == [str(tmp_path / "a")]


def test_build_and_train_in_your_own_process():
    cfg = gradexp.compose(["train.steps=2", "model.depth=2", "model.width=8"])
    run = gradexp.build_run(cfg)
    outcome = gradexp.train(run, gradexp.settings(cfg))
    assert isinstance(run, gradexp.Run) and isinstance(outcome, gradexp.Outcome)
    assert outcome.status == "completed" and outcome.steps == 2


def test_compose_reads_the_users_config_dir(tmp_path):
    (tmp_path / "activation").mkdir()
    (tmp_path / "activation" / "mine.yaml").write_text("name: tanh\n")
    assert gradexp.compose(["activation=mine"], config_dir=str(tmp_path)).activation.name == "tanh"


def _write(folder, summary):
    os.makedirs(folder)
    with open(os.path.join(folder, "summary.json"), "w") as f:
        json.dump(summary, f)


V1 = {  # a summary.json as gradexp 0.1 wrote it: no schema_version, verdict without at_init/at_end
    "status": "completed", "steps": 10, "overrides": ["activation=tanh"], "final": {"loss/train": 0.5, "acc/val": 0.9},
    "layers": [{"name": f"layers.{i}", "act_grad_norm": {"first": 10.0 ** -i, "last": 10.0 ** -i}} for i in range(3)][::-1],
    "nonfinite": None, "verdict": {"label": "vanishing", "evidence": "", "suggestions": []}, "perf": {"steps_per_s": 100.0},
}


def test_a_summary_from_before_schema_versions_reads_as_version_1_and_reports(tmp_path, capsys):
    from gradexp.report.table import main

    _write(tmp_path / "old", V1)
    assert gradexp.load_summary(str(tmp_path / "old"))["schema_version"] == 1
    assert main([str(tmp_path), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["status"] == "completed" and rows[0]["verdict"] == "vanishing"


def test_a_summary_from_a_newer_gradexp_is_refused_in_one_line(tmp_path, capsys):
    from gradexp.report.table import main

    _write(tmp_path / "new", {**V1, "schema_version": gradexp.SCHEMA_VERSION + 1})
    with pytest.raises(ValueError, match="schema_version"):
        gradexp.load_summary(str(tmp_path / "new"))
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "schema_version" in err and "\n" not in err
