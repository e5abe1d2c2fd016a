"""`gradexp report` on constructed sweep folders (summary.json + .hydra/ written by hand) and on real tiny runs."""
from __future__ import annotations

import csv
import json
import os

import pytest

from gradexp.analysis.flow import first_last_ratio, per_layer_gain
from gradexp.report.table import main
from gradexp.report.runs import find_runs, load_run, varying_keys


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


@pytest.mark.parametrize("key", ["speed", "", "--gain", "-"])  # '' and '--gain' were taken silently (adversarial test)
def test_unknown_sort_key_names_the_allowed_columns(sweep, capsys, key):
    assert main([str(sweep), f"--sort={key}"]) == 2
    err = capsys.readouterr().err
    assert "--sort" in err and repr(key) in err and "steps/s" in err and len(err.strip().splitlines()) == 1


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


def png_size(path) -> tuple[int, int]:
    """(width, height) in pixels from the PNG's IHDR chunk."""
    header = open(path, "rb").read(24)
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def test_dpi_sets_the_figure_size_and_a_bad_one_is_one_line(sweep, tmp_path, capsys):
    """Two varying factors: profiles + phase diagram, 17 x 6 inches at the requested dots per inch."""
    for dpi in (30, 60):
        assert main([str(sweep), "--dpi", str(dpi), "--out", str(tmp_path / str(dpi)), "--format", "csv"]) == 0
        assert png_size(tmp_path / str(dpi) / "report.png") == (17 * dpi, 6 * dpi)
    capsys.readouterr()
    assert main([str(sweep), "--dpi", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--dpi" in err[0] and "0" in err[0] and "10 to 600" in err[0]
    assert main([str(sweep), "--format", "xml"]) == 2  # argparse's own refusals: one line too, not its usage block
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "xml" in err[0] and "table" in err[0]


def plotted(ax) -> dict[str, list[float]]:
    """label -> y values of every line on a matplotlib axis."""
    return {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}


def test_theory_is_drawn_dashed_beside_the_measured_step_0_profile(tmp_path):
    from gradexp.report.figure import figure

    predicted = {f"layers.{i}": {"predicted": 0.5 ** (3 - i)} for i in range(4)}
    write_run(tmp_path / "0", ["init=xavier_normal"], norms=geometric(0.6, 4),
              theory={"predicted_gain": 0.5, "per_layer": predicted})
    write_run(tmp_path / "1", ["init=kaiming_normal"], norms=geometric(1.0, 4), theory=None)
    records = [load_run(str(tmp_path / d), str(tmp_path)) for d in ("0", "1")]
    axes = figure(records, varying_keys(records)).axes
    dashed = [line for line in axes[0].get_lines() if line.get_linestyle() == "--" and len(line.get_ydata())]
    assert len(dashed) == 1 and list(dashed[0].get_ydata()) == [0.125, 0.25, 0.5, 1.0]
    assert not [line for line in axes[1].get_lines() if line.get_linestyle() == "--"]  # theory: initialization only


def bptt(first: list[float], last: list[float]) -> dict:
    return {"layers.0": {"first": first, "first_step": 0, "last": last, "last_step": 100}}


def test_recurrent_runs_show_their_gradient_through_time(tmp_path, capsys):
    """Single-layer recurrent nets have no per-layer profile: the figure plots summary["bptt"] against t,
    the phase diagram is coloured by the per-time-step gain, and the table gets a `time gain` column."""
    from gradexp.report.figure import figure

    profiles = {("rnn", "10"): geometric(0.5, 10), ("rnn", "40"): geometric(0.5, 40),
                ("lstm", "10"): geometric(0.95, 10), ("lstm", "40"): geometric(0.95, 40)}
    for i, ((model, length), profile) in enumerate(profiles.items()):  # last profile: twice the first
        write_run(tmp_path / str(i), [f"model={model}", f"data.seq_len={length}"], norms=[1.0],
                  bptt=bptt(profile, [2 * v for v in profile]))
    write_run(tmp_path / "4", ["model=gru", "data.seq_len=40"], status="diverged", norms=[1.0],  # stopped at step 0
              bptt={"layers.0": {"first": [1.0, 2.0], "first_step": 0, "last": [1.0, 2.0], "last_step": 0}})
    records = [load_run(str(tmp_path / str(i)), str(tmp_path)) for i in range(5)]
    fig = figure(records, varying_keys(records))
    titles = {ax.get_title(): ax for ax in fig.axes}
    assert not any("per-layer" in t for t in titles)
    first, last = titles["gradient through time at step 0"], titles["gradient through time at step 100"]
    assert plotted(first)["model=rnn data.seq_len=40 [healthy]"] == profiles[("rnn", "40")]
    assert plotted(last)["model=lstm data.seq_len=10 [healthy]"] == [2 * v for v in profiles[("lstm", "10")]]
    assert "model=gru data.seq_len=40 [diverged]" in plotted(first)
    assert "model=gru data.seq_len=40 [diverged]" not in plotted(last)  # its step-0 profile is not a later one
    assert "trainability map: per-time-step gain (step 0 → last)" in titles
    assert fig.axes[-1].get_ylabel() == "log10 per-time-step gain"  # the phase diagram's colour bar
    cells = [t.get_text() for t in titles["trainability map: per-time-step gain (step 0 → last)"].texts]
    assert "×0.95 → ×0.95\nhealthy" in cells and "×0.5 → ×0.5\nhealthy" in cells
    assert main([str(tmp_path), "--format", "json"]) == 0
    rows = {(r["model"], r["data.seq_len"]): r for r in json.loads(capsys.readouterr().out)}
    assert rows[("rnn", "40")]["time gain"] == pytest.approx(0.5)
    assert rows[("lstm", "10")]["time gain"] == pytest.approx(0.95) and rows[("lstm", "10")]["gain"] is None


def test_real_recurrent_run_plots_its_summary_bptt_profile(run_tiny):
    from gradexp.report.figure import figure

    _, run_dir = run_tiny(["model=rnn", "model.depth=1", "data=adding", "data.seq_len=6", "log.bptt_every=2"], name="rnn")
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    record = load_run(run_dir, os.path.dirname(run_dir))
    fig = figure([record], [])
    lines = {ax.get_title(): plotted(ax) for ax in fig.axes}
    assert list(lines["gradient through time at step 0"].values()) == [summary["bptt"]["layers.0"]["first"]]
    last_step = summary["bptt"]["layers.0"]["last_step"]
    assert list(lines[f"gradient through time at step {last_step}"].values()) == [summary["bptt"]["layers.0"]["last"]]
    assert record.time_gain == pytest.approx(summary["verdict"]["time_gain"])


@pytest.fixture
def mixed(tmp_path):
    """A multirun/ folder holding two sweeps over different factors; the second repeats each init with two seeds."""
    root = tmp_path / "multirun"
    first, second = root / "2026-11-29" / "10-00-00-000001", root / "2026-11-29" / "11-00-00-000002"
    write_run(first / "0_activation=sigmoid", ["activation=sigmoid"], norms=geometric(0.3))
    write_run(first / "1_activation=relu", ["activation=relu"], norms=geometric(0.9))
    gains = {("xavier_normal", 0): 0.5, ("xavier_normal", 1): 0.6, ("kaiming_normal", 0): 0.95, ("kaiming_normal", 1): 1.0}
    for i, ((init, seed), gain) in enumerate(gains.items()):
        write_run(second / f"{i}_init={init},seed={seed}", [f"init={init}", f"seed={seed}"], norms=geometric(gain))
    return root, gains


def test_mixed_sweeps_print_one_table_each_with_seeds_folded(mixed, capsys):
    import torch

    root, gains = mixed
    assert main([str(root)]) == 0
    out = capsys.readouterr().out
    first, second = out.split("gradexp report: ")[1:3]
    assert first.startswith("2 runs in 2026-11-29/10-00-00-000001") and "activation" in first and "init" not in first
    assert second.startswith("4 runs in 2026-11-29/11-00-00-000002") and "activation" not in second
    assert "2 seeds" in second and "0,1" in second and "2,3" in second  # the jobs folded into each row
    for init in ("xavier_normal", "kaiming_normal"):
        values = torch.tensor([g for (i, _), g in gains.items() if i == init], dtype=torch.float64)
        assert f"{values.mean().item():.3g} ± {values.std().item():.2g}" in second  # sample standard deviation


def test_seeds_fold_the_measured_gain_into_its_mean_and_spread(tmp_path, capsys):
    """Found by a new user's walkthrough: folded over three seeds, the "measured gain, step 0" cell read
    "1 0.433 (95 % 0.411–0.453), 1 0.385 (…), 1 0.429 (…)" (each distinct text counted, as for a status), and a
    theory gain the same in every run read "0.408 ± 3.2e-17"."""
    import torch

    measured = [0.433, 0.385, 0.429]
    for seed, gain in enumerate(measured):
        theory = {"predicted_gain": 0.408, "measured_gain": gain,
                  "measured_gain_spread": {"interval95": [gain - 0.02, gain + 0.02]}}
        write_run(tmp_path / "sweep" / f"{seed}_seed={seed}", [f"seed={seed}"], norms=geometric(0.5), theory=theory)
    assert main([str(tmp_path / "sweep")]) == 0
    out = capsys.readouterr().out
    values = torch.tensor(measured, dtype=torch.float64)
    assert f"{values.mean().item():.3g} ± {values.std().item():.2g}" in out and "95 %" not in out
    assert "0.408 ± 0" in out and "e-17" not in out


def test_a_spread_below_the_shown_digits_of_its_mean_reads_zero(tmp_path, capsys):
    """Found by a new user: "theory gain 0.568 ± 4.6e-10", rounding noise of one number computed per seed."""
    for seed, gain in enumerate([0.568, 0.568 + 4.6e-10, 0.568 - 3e-10]):
        theory = {"predicted_gain": gain, "measured_gain": 0.5}
        write_run(tmp_path / "sweep" / f"{seed}_seed={seed}", [f"seed={seed}"], norms=geometric(0.5), theory=theory)
    assert main([str(tmp_path / "sweep")]) == 0
    out = capsys.readouterr().out
    assert "0.568 ± 0" in out and "e-10" not in out


def test_mixed_sweeps_keep_every_run_and_column_in_csv_and_json(mixed, capsys):
    root, _ = mixed
    assert main([str(root), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 6 and all({"activation", "init", "seed", "evidence"} <= set(r) for r in rows)
    assert rows[0]["run"] == "2026-11-29/10-00-00-000001/0_activation=sigmoid" and rows[0]["init"] == ""
    with open(root / "report.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["run"] for r in table] == [r["run"] for r in rows] and table[2]["seed"] == "0"


def test_mixed_sweeps_legend_names_only_each_runs_own_factors(mixed):
    from gradexp.report.table import figure_keys
    from gradexp.report.figure import figure

    root, _ = mixed
    records = [load_run(f, str(root)) for f in find_runs(str(root))]
    fig = figure(records, [k for k in figure_keys(records) if k != "seed"])
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "activation=sigmoid [healthy]" in labels and "init=xavier_normal [healthy]" in labels
    assert not [label for label in labels if "= " in label or "=[" in label]  # no empty factor


def test_hundreds_of_runs_get_no_legend_that_covers_the_charts(tmp_path):
    """Found by an adversarial test: with ~200 runs and more, the legend covered every chart (and matplotlib warned
    that its layout collapsed). Above LEGEND_MAX entries the figure says where the names are instead."""
    import warnings

    from gradexp.report.figure import LEGEND_MAX, figure

    for i in range(LEGEND_MAX + 1):
        write_run(tmp_path / f"{i}_seed={i}", [f"seed={i}"], norms=geometric(0.5 + i / 100))
    records = [load_run(f, str(tmp_path)) for f in find_runs(str(tmp_path))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no layout warning
        fig = figure(records, ["seed"])
        fig.canvas.draw()
    assert not fig.legends and fig._suptitle.get_text() == f"{LEGEND_MAX + 1} runs: too many to name here; report.csv names each"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the longest legend drawn still leaves the charts their room
        fewer = figure(records[:LEGEND_MAX], ["seed"])
        fewer.canvas.draw()
    assert len(fewer.legends[0].get_texts()) == LEGEND_MAX


def test_mixed_sweeps_get_no_phase_diagram_across_sweeps(mixed, tmp_path):
    """activation (first sweep) and init (second) are two factors, but of different sweeps: no grid to draw."""
    import matplotlib.image

    from gradexp.report.table import figure_keys

    root, _ = mixed
    records = [load_run(f, str(root)) for f in find_runs(str(root))]
    assert figure_keys(records) == ["activation", "init", "seed"]
    assert main([str(root), "--format", "csv", "--out", str(tmp_path), "--dpi", "20"]) == 0
    assert matplotlib.image.imread(tmp_path / "report.png").shape[1] == 12 * 20  # 17 inches wide with a phase diagram


def test_a_folder_of_unrelated_runs_prints_their_overrides_in_one_column(tmp_path, capsys):
    """Dozens of keys vary across a day's single runs: as columns each would be squeezed to a letter and the verdict
    to nothing. Beyond FACTOR_COLUMNS they share one `overrides` column; report.csv keeps a column per key."""
    from gradexp.report.table import FACTOR_COLUMNS

    root = tmp_path / "outputs" / "2026-11-30"
    for i in range(FACTOR_COLUMNS + 2):
        write_run(root / f"10-00-0{i}", [f"key{i}.x={i}", "seed=1" if i % 2 else "seed=2"], norms=geometric(0.5))
    assert main([str(tmp_path / "outputs"), "--format", "table"]) == 0
    out = capsys.readouterr().out
    assert "overrides" in out and "key3.x=3" in out and "healthy" in out
    header = (tmp_path / "outputs" / "report.csv").read_text().splitlines()[0].split(",")
    assert {f"key{i}.x" for i in range(FACTOR_COLUMNS + 2)} <= set(header)


def test_the_report_of_one_run_folder_names_the_run_by_its_folder(tmp_path, capsys):
    """Found by a new user's walkthrough: `gradexp report <a run folder>` named the run '.'."""
    write_run(tmp_path / "12-00-00-000001", ["activation=relu"], norms=geometric(0.9))
    assert main([str(tmp_path / "12-00-00-000001"), "--format", "json"]) == 0
    assert [r["run"] for r in json.loads(capsys.readouterr().out)] == ["12-00-00-000001"]


def test_a_runs_attempt_folders_are_not_runs_of_their_own(tmp_path):
    """Found by an adversarial test: a rerun moves an earlier attempt's files into attempt-N/ inside the run, and
    the report listed each as a run (interrupted, unfinished), inflating the sweep's table and figure."""
    write_run(tmp_path / "sweep" / "0_a", ["activation=relu"], norms=geometric(0.7))
    write_run(tmp_path / "sweep" / "0_a" / "attempt-1", ["activation=relu"], status="interrupted", hydra=False)
    write_run(tmp_path / "sweep" / "attempt-2", ["activation=tanh"], norms=geometric(0.7))  # a run named so: kept
    assert [os.path.relpath(f, tmp_path) for f in find_runs(str(tmp_path / "sweep"))] == ["sweep/0_a",
                                                                                         "sweep/attempt-2"]
