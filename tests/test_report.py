"""`gradexp report` on constructed sweep folders (summary.json + .hydra/ written by hand) and on real tiny runs."""
from __future__ import annotations

import csv
import json
import os

import pytest

from gradexp.flow import first_last_ratio, per_layer_gain
from gradexp.report import main
from gradexp.runs import find_runs, load_run, varying_keys


def geometric(gain: float, n: int = 5) -> list[float]:
    return [gain ** (n - 1 - i) for i in range(n)]


def write_run(folder, overrides, status="completed", norms=None, hydra=True, summary=True, **extra):
    os.makedirs(folder, exist_ok=True)
    if hydra:
        os.makedirs(folder / ".hydra", exist_ok=True)
        (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if summary:
        layers = [{"name": f"layers.{i}", "act_grad_norm": {"first": n, "last": n}} for i, n in enumerate(norms or [])]
        label = {"completed": "healthy"}.get(status, status)
        payload = {"status": status, "steps": 10, "overrides": overrides, "final": {"loss/train": 0.5, "acc/val": 0.9},
                   "layers": layers, "nonfinite": None, "verdict": {"label": label, "evidence": "e", "suggestions": []},
                   "perf": {"steps_per_s": 100.0}, **extra}
        (folder / "summary.json").write_text(json.dumps(payload))


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    write_run(root / "0_a", ["activation=sigmoid", "init=xavier_normal"], norms=geometric(0.25))
    write_run(root / "1_b", ["activation=relu", "init=xavier_normal"], norms=geometric(0.7))
    write_run(root / "2_c", ["activation=sigmoid", "init=kaiming_normal"], status="diverged", norms=[1.0, None, None])
    write_run(root / "3_d", ["activation=relu", "init=kaiming_normal"], summary=False)  # killed before the end
    (root / ".submitit").mkdir()
    (root / "multirun.yaml").write_text("x: 1\n")
    return root


def test_every_run_is_found_including_unfinished_and_diverged(sweep):
    folders = find_runs(str(sweep))
    assert [os.path.basename(f) for f in folders] == ["0_a", "1_b", "2_c", "3_d"]
    records = [load_run(f, str(sweep)) for f in folders]
    assert [r.status for r in records] == ["completed", "completed", "diverged", "unfinished"]
    assert records[3].overrides == {"activation": "relu", "init": "kaiming_normal"}  # from .hydra/overrides.yaml
    assert varying_keys(records) == ["activation", "init"]
    assert records[0].gain == pytest.approx(per_layer_gain(geometric(0.25)))
    assert records[0].ratio == pytest.approx(first_last_ratio(geometric(0.25)))


def test_json_rows_csv_and_figure(sweep, capsys):
    assert main([str(sweep), "--format", "json", "--sort", "gain"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in rows] == ["0_a", "1_b", "2_c", "3_d"]  # gain ascending, runs without one last
    assert rows[0]["activation"] == "sigmoid" and rows[0]["gain"] == pytest.approx(0.25)
    assert rows[1]["first/last"] == pytest.approx(0.7 ** 4)
    assert rows[0]["verdict"] == "healthy" and rows[0]["steps/s"] == 100.0 and rows[0]["loss/train"] == 0.5
    with open(sweep / "report.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["status"] for r in table] == ["completed", "completed", "diverged", "unfinished"]
    assert (sweep / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_descending_sort_table_and_theory_column(tmp_path, capsys):
    root = tmp_path / "s"
    write_run(root / "0", ["model.depth=10"], norms=geometric(0.5), theory={"predicted_gain": 0.51, "measured_gain": 0.5})
    write_run(root / "1", ["model.depth=20"], norms=geometric(0.9))
    assert main([str(root), "--format", "csv", "--sort=-gain"]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [r["model.depth"] for r in rows] == ["20", "10"]
    assert rows[1]["theory gain"] == "0.51"
    assert main([str(root)]) == 0
    out = capsys.readouterr().out
    assert "theory gain" in out and "model.depth" in out and "report.csv" in out


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_missing_or_empty_path_is_one_line_and_exit_2(tmp_path, capsys, make):
    path = tmp_path / "nothing"
    if make == "empty":
        path.mkdir()
    assert main([str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0]


def test_unknown_sort_key_names_the_allowed_columns(sweep, capsys):
    assert main([str(sweep), "--sort", "speed"]) == 2
    err = capsys.readouterr().err
    assert "--sort" in err and "'speed'" in err and "steps/s" in err


def test_real_runs_report_their_summary_values(run_tiny, capsys):
    _, run_dir = run_tiny(["activation=sigmoid", "model.depth=3"], name="sigmoid")
    run_tiny(["activation=relu", "model.depth=3"], name="relu")
    root = os.path.dirname(run_dir)
    assert main([root, "--format", "json"]) == 0
    rows = {r["activation"]: r for r in json.loads(capsys.readouterr().out)}
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    assert rows["sigmoid"]["verdict"] == summary["verdict"]["label"]
    assert rows["sigmoid"]["gain"] == pytest.approx(summary["verdict"]["gain"])
    assert rows["sigmoid"]["loss/train"] == pytest.approx(summary["final"]["loss/train"])
