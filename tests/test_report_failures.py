"""`gradexp report` where a run or the disk is not what it expects: a frozen first layer, a full disk while report.png
is written, norms near float's limits, a run that diverged after measuring a good accuracy (each found by a user)."""
from __future__ import annotations

import csv
import errno
import json
import math
import os
import warnings

import pytest

from gradexp.report.runs import load_run
from gradexp.report.table import main
from tests.test_report import geometric, write_run


def error_lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


# --- a layer without the flow's norms: a frozen first layer ---------------------------------------------------------

def test_a_monitor_run_whose_first_layer_is_frozen_is_reported(tmp_path, capsys):
    """Its first layer takes in no gradient, so summary.json has no act_grad_norm for it: a KeyError traceback."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    import gradexp

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(4))
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            for layer in self.layers:
                x = torch.tanh(layer(x))
            return self.head(x)

    torch.manual_seed(0)
    model = MLP()
    model.layers[0].requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    run_dir = tmp_path / "run"
    with gradexp.Monitor(model, run_dir=str(run_dir), every=5, optimizers=[opt]) as monitor:
        for _ in range(10):
            with monitor.step():
                F.cross_entropy(model(torch.randn(16, 8)), torch.randint(0, 2, (16,))).backward()
                opt.step()
                opt.zero_grad()
    layers = json.loads((run_dir / "summary.json").read_text())["layers"]
    assert "act_grad_norm" not in layers[0] and "act_grad_norm" in layers[1]  # the case itself
    capsys.readouterr()
    assert main([str(run_dir), "--format", "csv"]) == 0
    out = capsys.readouterr()
    assert out.err == "" and len(list(csv.DictReader(out.out.splitlines()))) == 1
    assert (run_dir / "report.png").exists()


def test_a_first_layer_without_norms_is_drawn_blank_in_its_place(tmp_path, capsys):
    run = tmp_path / "run"
    write_run(run, ["activation=tanh"], norms=geometric(0.5))
    summary = json.loads((run / "summary.json").read_text())
    summary["layers"][0] = {"name": "layers.0"}
    (run / "summary.json").write_text(json.dumps(summary))
    assert main([str(run), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["gain"] == pytest.approx(0.5)
    profile = load_run(str(run), str(tmp_path)).profile
    assert math.isnan(profile["first"][0]) and profile["first"][1:] == geometric(0.5)[1:]  # layer 1 stays layer 1


# --- a full disk while report.png is written: both reports or neither, and no folder of ours left ------------------

@pytest.fixture
def full_disk(monkeypatch):
    """report.png's write fails half way, as on a full disk (ENOSPC); report.csv's succeeds."""
    import matplotlib.figure

    def save(self, f, **kwargs):
        f.write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    return lambda: monkeypatch.setattr(matplotlib.figure.Figure, "savefig", save)


def test_a_full_disk_leaves_the_earlier_report_whole_and_no_temporary_file(tmp_path, capsys, full_disk):
    root = tmp_path / "sweep"
    write_run(root / "0", ["activation=tanh"], norms=geometric(0.5))
    out = tmp_path / "out"
    assert main([str(root), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["report.csv", "report.png"]
    write_run(root / "1", ["activation=relu"], norms=geometric(0.9))  # a new report would differ from the old one
    full_disk()
    capsys.readouterr()
    assert main([str(root), "--out", str(out)]) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "report.png" in err[0] and "No space left on device" in err[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old CSV too, beside the old PNG


def test_a_full_disk_removes_the_output_folders_it_made_and_nothing_else(tmp_path, capsys, full_disk):
    root = tmp_path / "sweep"
    write_run(root / "0", ["activation=tanh"], norms=geometric(0.5))
    base = tmp_path / "x"
    base.mkdir()
    (base / "keep").write_text("mine\n")
    full_disk()
    assert main([str(root), "--out", str(base / "new" / "deep" / "out")]) == 2
    assert len(error_lines(capsys)) == 1
    assert sorted(p.name for p in base.iterdir()) == ["keep"] and (base / "keep").read_text() == "mine\n"
    assert sorted(p.name for p in root.iterdir()) == ["0"]


# --- norms near float's limits: drawn, without warnings ---------------------------------------------------------------

def test_norms_from_1e_300_to_1e300_are_drawn_without_a_warning(tmp_path, capsys):
    run = tmp_path / "run"
    write_run(run, ["activation=tanh"], norms=[1e-300, 1e-150, 1.0, 1e150, 1e300])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([str(run), "--format", "csv"]) == 0
    assert [str(w.message) for w in caught] == [] and capsys.readouterr().err == ""
    from gradexp.report.figure import figure

    fig = figure([load_run(str(run), str(tmp_path))], [])
    fig.canvas.draw()
    low, high = fig.axes[0].get_ylim()
    assert low < 1e-100 and high > 1e100  # the axis spans the norms, not matplotlib's fallback 1 … 10
    assert "at the edge" in fig.axes[0].get_title()  # what is drawn beyond the range says so
    with open(run / "report.csv") as f:
        assert float(next(csv.DictReader(f))["first/last"]) == pytest.approx(1e-300 / 1e300)  # the csv keeps them


# --- sorting: runs that did not complete after the completed ones ---------------------------------------------------

@pytest.mark.parametrize("sort, order", [("--sort=-acc/val", ["0", "2", "1"]), ("--sort=acc/val", ["2", "0", "1"]),
                                         ("--sort=activation", ["2", "1", "0"])])
def test_a_diverged_run_sorts_after_the_completed_ones_in_either_direction(tmp_path, capsys, sort, order):
    """Its acc/val was measured before it diverged (Optuna scored the trial -inf). By a factor, runs keep its order."""
    root = tmp_path / "sweep"
    write_run(root / "0", ["activation=tanh"], norms=geometric(0.5), final={"acc/val": 0.09})
    write_run(root / "1", ["activation=relu"], status="diverged", norms=geometric(0.9), final={"acc/val": 0.106})
    write_run(root / "2", ["activation=elu"], norms=geometric(0.9), final={"acc/val": 0.05})
    assert main([str(root), "--format", "json", sort]) == 0
    assert [r["run"] for r in json.loads(capsys.readouterr().out)] == order
