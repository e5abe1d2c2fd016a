"""`gradexp report PATH`: one row per run under PATH (a run folder or a whole sweep), the overrides that vary,
status, final metrics, per-layer gain, first/last ratio, verdict and speed; writes report.csv and report.png.

Exit status: 0 when at least one run was read; 2 (one line on stderr, nothing written) for bad arguments, no runs
under PATH, a report.csv/report.png in the way that gradexp report did not write (output.py), or an output folder
that cannot be written. A run whose files are unreadable or malformed (runs.py) is no reason to stop: it is listed
with status `unreadable` (its evidence says why), with one line per such run on stderr; when every run is
unreadable, those lines are all the report says, with exit status 2."""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import sys
from typing import Any, Optional

from gradexp.report.figure import DPI, draw, drawable  # matplotlib itself is imported only when a figure is drawn
from gradexp.report.groups import SEED, by_sweep, fold, job_name, seed_folds, sweep_of
from gradexp.report.output import (CSV_NAME, PNG_NAME, commit, discard, make_folders, refusal, remove_folders,
                                   stage)
from gradexp.report.runs import RunRecord, load_run, varying_keys, walk_runs
from gradexp.report.untrusted import printable

EXIT_BAD_INPUT = 2
FACTOR_COLUMNS = 6  # varying keys shown as columns of their own in the printed table; more share one
METRICS = ("loss/train", "loss/val", "acc/val")
NUMERIC = (*METRICS, "gain", "first/last", "theory gain", "time gain", "steps/s")
MEASURED = "measured gain, step 0"  # one run: the gain and its interval, as text; runs folded over seeds: a number
COMPLETED = "completed"  # the status of a run that trained to its end (sort_rows ranks the others after it)
VERDICT_STYLE = {"healthy": "green", "vanishing": "blue", "exploding": "red", "diverged": "magenta"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, as every refusal (argparse prints its usage block first)
        if message.startswith("argument --sort") and "expected one argument" in message:  # `--sort -gain`
            message += " (a descending sort is written --sort=-KEY)"
        print(f"gradexp report: {message} (see gradexp report --help)", file=sys.stderr)
        raise SystemExit(2)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = _Parser(prog="gradexp report", description=__doc__.split(";")[0])
    parser.add_argument("path", help="a run folder, a sweep folder (e.g. multirun/2024-05-01/12-00-00-123456) or a "
                        "folder of them (e.g. runs/)")
    parser.add_argument("--sort", metavar="KEY", help="column to sort by, e.g. gain; --sort=-gain for descending")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table", help="what to print")
    parser.add_argument("--out", metavar="DIR", help="where report.csv and report.png go (default: PATH)")
    parser.add_argument("--dpi", type=int, default=DPI, metavar="N",
                        help=f"report.png resolution in dots per inch (default {DPI}; e.g. 60 for a small PNG)")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
    except SystemExit as exit_:  # argparse printed usage (--help: 0) or one error line (2)
        return int(exit_.code or 0)
    for option in ("sort", "out", "dpi"):  # argparse reads `--sort=--` as an empty list (found by an adversarial test)
        if isinstance(getattr(args, option), list):
            return _bad(f"invalid value for --{option}: '--' (allowed: a value; see gradexp report --help)")
    if not 10 <= args.dpi <= 600:
        return _bad(f"invalid value for --dpi: {args.dpi} (allowed: an integer from 10 to 600)")
    if not os.path.isdir(args.path):
        return _bad(f"no such folder: {args.path!r} (allowed: a run folder or a sweep folder)")
    folders, unlisted = walk_runs(args.path)
    for folder, reason in unlisted:  # one line each: runs below it cannot be seen, let alone reported
        _say(f"cannot look into {printable(folder)} ({reason}): any runs below it are left out")
    if not folders:
        return _bad(f"no runs under {args.path!r} (a run folder holds .hydra/ or summary.json)")
    records = [load_run(folder, args.path) for folder in folders]
    for record in records:  # one line each; the run stays in the report, status `unreadable`
        if record.problem:
            _say(record.problem)
    read = [r for r in records if not r.problem]  # what the figure and its factors are drawn from
    if not read:
        return EXIT_BAD_INPUT
    everything = list(dict.fromkeys(k for r in records for k in r.overrides))  # csv/json keep every override
    theory = any(r.theory_gain is not None for r in records)
    time = any(r.time_gain is not None for r in records)
    rows = [row(r, everything, theory, time) for r in records]
    columns = list(rows[0])
    if args.sort is not None:
        descending = args.sort.startswith("-")
        key = args.sort[descending:]  # one leading '-' only: '--gain' names no column
        if key not in columns:
            return _bad(f"invalid value for --sort: {args.sort!r} (allowed: {' | '.join(columns)})")
        rows = sort_rows(rows, key, descending)
    out = args.out or args.path
    problem, made = _prepare(out, drawable(read))
    if problem:
        return _bad(problem)
    try:
        figure_path = _write(out, rows, read, args.dpi, made)
    except OSError as err:  # a full disk, a read-only folder
        return _bad(f"cannot write {printable(str(err.filename))}: {err.strerror or err}")
    _print(rows, records, args.format, figure_path, out)
    return 0


def _write(out: str, rows: list[dict[str, Any]], read: list[RunRecord], dpi: int, made: list[str]) -> Optional[str]:
    """report.csv and report.png, both or neither: each is written whole to a temporary file, and both are renamed
    into place only once both are complete (found by a user: a full disk while report.png was written left a new
    report.csv beside the old report.png, and the folders --out had made). report.png's path, None where there is
    nothing to draw. On a failure (the OSError is raised) the temporary files and the folders in `made` are
    removed."""
    keys = [k for k in figure_keys(read) if k != SEED]  # seeds of one setting share a legend entry
    one_sweep = len(by_sweep(read)) == 1  # factors of different sweeps do not form one phase-diagram grid
    csv_path, png_path = os.path.join(out, CSV_NAME), os.path.join(out, PNG_NAME)
    staged: dict[str, str] = {}  # final name -> our temporary file
    try:
        staged[csv_path] = stage(csv_path, lambda f: f.write(to_csv(rows)))
        figure = draw(read, keys, png_path, dpi, phase=one_sweep)
        if figure is not None:
            staged[png_path] = figure
        commit(staged)
    except BaseException:  # also on Ctrl-C: nothing of ours is left half done
        discard(staged.values())
        remove_folders(made)
        raise
    return None if figure is None else png_path


def _prepare(out: str, figure: bool) -> tuple[Optional[str], list[str]]:
    """The output folder, made where missing; why the report may not be written there (one line) or None, and the
    folders this made (deepest first: a report that fails later removes them). Checked before anything is written: a
    refused report leaves no file or folder behind."""
    if os.path.lexists(out) and not os.path.isdir(out):
        return f"invalid value for --out: {printable(out)!r} is not a folder (allowed: a folder, made if missing)", []
    try:
        made = make_folders(out)
    except OSError as err:
        return f"cannot make the output folder {printable(out)!r} ({err.strerror or err})", []
    problem = _refused(out, figure)
    if problem:
        remove_folders(made)
        return problem, []
    return None, made


def _refused(out: str, figure: bool) -> Optional[str]:
    """Why report.csv or report.png may not be written in the folder `out` (one line), or None."""
    if not os.access(out, os.W_OK | os.X_OK):
        return f"cannot write to the output folder {printable(out)!r} (permission denied)"
    names = [CSV_NAME] + ([PNG_NAME] if figure else [])
    return next(filter(None, (refusal(os.path.join(out, name)) for name in names)), None)


def figure_keys(records: list[RunRecord]) -> list[str]:
    """The factors that vary within some sweep (a key only one sweep has is no factor of the others)."""
    return list(dict.fromkeys(k for group in by_sweep(records).values() for k in varying_keys(group)))


def row(r: RunRecord, keys: list[str], theory: bool = False, time: bool = False) -> dict[str, Any]:
    """One run as ordered columns: its value of every key in `keys` ('' where it has none), results, evidence."""
    out = {"run": r.path, **{k: r.overrides.get(k, "") for k in keys}, "status": r.status}
    out.update({m: r.final.get(m) for m in METRICS})
    out.update({"gain": r.gain, "first/last": r.ratio, "verdict": r.verdict.get("label", "")})
    if theory:  # summary["theory"] (MLPs): the gain mean-field theory predicts for this init and activation
        out["theory gain"] = r.theory_gain
        out[MEASURED] = r.theory_measured  # with its spread: agreement vs one net's noise
    if time:  # summary["bptt"] (recurrent runs): factor per time step travelled backward
        out["time gain"] = r.time_gain
    out["steps/s"] = r.steps_per_s
    out["evidence"] = r.problem or r.verdict.get("evidence", "")  # unreadable: what is wrong with its files
    return out


def sort_rows(rows: list[dict[str, Any]], key: str, descending: bool) -> list[dict[str, Any]]:
    """Numbers numerically, text alphabetically; runs without a value for `key` last in either direction. By a
    measured column (NUMERIC) the runs that did not complete come after the completed ones, also in either direction:
    a diverged run's acc/val was measured before it diverged, and ranked it above runs that trained (found by a user;
    Optuna scores such a trial -inf). By a text column (a factor, run, status) all runs are sorted together."""
    if key not in NUMERIC:
        return _sorted(rows, key, descending)
    completed = [r for r in rows if r["status"] == COMPLETED]
    return _sorted(completed, key, descending) + _sorted([r for r in rows if r["status"] != COMPLETED], key, descending)


def _sorted(rows: list[dict[str, Any]], key: str, descending: bool) -> list[dict[str, Any]]:
    def missing(value: Any) -> bool:
        return value is None or value == "" or (isinstance(value, float) and math.isnan(value))

    present = [r for r in rows if not missing(r[key])]
    present.sort(key=lambda r: (1, r[key]) if isinstance(r[key], str) else (0, r[key]), reverse=descending)
    return present + [r for r in rows if missing(r[key])]


def to_csv(rows: list[dict[str, Any]]) -> str:
    rows = [{_csv_cell(k): _csv_cell(v) for k, v in r.items()} for r in rows]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# "-", "+model.hidden", "-1e-3", "+1.5E+07": no formula a spreadsheet would run
_PLAIN_SIGNED = re.compile(r"[+-]([\w.]*|\d*\.?\d*([eE][+-]?\d+)?)")


def _csv_cell(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula (=HYPERLINK(...), @SUM(...), -cmd|...) gets a leading
    quote, as OWASP advises: a run folder is untrusted, and its overrides and summary reach report.csv as they are
    (found by an adversarial test)."""
    if isinstance(value, str) and value[:1] in ("=", "@", "\t", "\r", "+", "-") and not _PLAIN_SIGNED.fullmatch(value):
        return "'" + value
    return value


def _json_safe(value: Any) -> Any:
    """JSON has no inf or NaN: json.dump wrote Infinity, which strict parsers refuse; null, as summary.json has it."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _print(rows: list[dict[str, Any]], records: list[RunRecord], fmt: str, figure: Optional[str], out: str) -> None:
    if fmt == "csv":
        sys.stdout.write(to_csv(rows))
    elif fmt == "json":
        json.dump(_json_safe(rows), sys.stdout, indent=2, ensure_ascii=False, allow_nan=False)
        sys.stdout.write("\n")
    else:
        from rich.console import Console
        from rich.text import Text

        console = Console() if sys.stdout.isatty() else Console(width=200)  # piped: don't squeeze to 80 columns
        for t in tables(rows, records):
            console.print(t)
        wrote = [os.path.join(out, CSV_NAME)] + ([figure] if figure else [])
        console.print(Text("wrote " + ", ".join(map(printable, wrote))), soft_wrap=True, highlight=False)


def tables(rows: list[dict[str, Any]], records: list[RunRecord]) -> list:
    """One table per sweep, in the order of the (sorted) rows: its varying factors as columns, seeds folded."""
    by_path = {r.path: r for r in records}
    sweeps: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        sweeps.setdefault(sweep_of(by_path[r["run"]]), []).append(r)
    out = []
    for sweep, members in sweeps.items():
        runs = [by_path[r["run"]] for r in members]
        title = f"gradexp report: {len(runs)} run{'s' * (len(runs) != 1)}" + (f" in {sweep}" if len(sweeps) > 1 else "")
        out.append(table(_shown(members, runs), printable(title)))
    return out


def _shown(rows: list[dict[str, Any]], runs: list[RunRecord]) -> list[dict[str, Any]]:
    """A sweep's rows as printed: the job's name, the keys that vary in this sweep, results; seeds folded."""
    keys = varying_keys(runs)
    columns = list(rows[0])
    results = [c for c in columns[columns.index("status"):] if c != "evidence"]  # row(): run, overrides, results
    shown = []
    for indices in seed_folds(runs):
        members = [{"run": job_name(rows[i]["run"]), **_factors(rows[i], keys),
                    **{c: rows[i][c] for c in results}} for i in indices]
        if len(members) > 1 and MEASURED in results:  # over seeds: the measured gains' mean and spread
            for member, i in zip(members, indices):
                member[MEASURED] = runs[i].theory_measured_gain
        folded = fold(members, (*NUMERIC, MEASURED))
        folded["run"] = ",".join(m["run"] for m in members)
        shown.append(folded)
    return shown


def _factors(row: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """The varying keys, a column each; beyond FACTOR_COLUMNS of them (a folder of unrelated runs varies dozens) the
    row's own values share one `overrides` column, so that the results and the verdict keep their width. The seed
    keeps its column: runs that differ only in it are folded. report.csv keeps every key as a column."""
    if len(keys) <= FACTOR_COLUMNS:
        return {k: row[k] for k in keys}
    given = " ".join(f"{k}={row[k]}" for k in keys if k != SEED and row[k] not in ("", None))
    return {**({SEED: row[SEED]} if SEED in keys else {}), "overrides": given}


def table(rows: list[dict[str, Any]], title: str):
    """A rich Table whose text is all plain: run folders' names and values are shown as written, never read as
    markup (an override value '[bold]x' stays that text)."""
    from rich.table import Table
    from rich.text import Text

    t = Table(title=Text(title), header_style="bold")
    for column in rows[0]:
        numeric = column in NUMERIC
        # numbers never wrap; text (long run names, values) wraps inside its column rather than being cut off
        t.add_column(Text(column), justify="right" if numeric else "left", no_wrap=numeric, overflow="fold")
    for r in rows:
        t.add_row(*[Text(_cell(column, r.get(column)), style=_style(column, r.get(column))) for column in rows[0]])
    return t


def _style(column: str, value: Any) -> str:
    return VERDICT_STYLE.get(value, "white") if column == "verdict" and isinstance(value, str) and value else ""


BELOW_SHOWN = 5e-4  # half a unit in the third significant digit, relative: a spread below it cannot show in the mean


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple):  # (mean, spread) over seeds
        mean, spread = value
        if isinstance(mean, float) and spread < BELOW_SHOWN * abs(mean):  # below the mean's last shown digit:
            spread = 0.0  # "0.568 ± 4.6e-10" was rounding noise of one number (found by a new user); csv/json keep it
        return f"{_cell(column, mean)} ± {spread:.2g}"
    if isinstance(value, float):
        if column == "steps/s":
            return f"{value:.0f}"
        return f"{value:.3g}" if column != "first/last" else f"{value:.2g}"
    return printable(str(value))


def _bad(message: str) -> int:
    _say(message)
    return EXIT_BAD_INPUT


def _say(message: str) -> None:
    print(f"gradexp report: {message}", file=sys.stderr)
