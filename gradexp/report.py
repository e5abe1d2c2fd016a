"""`gradexp report PATH`: one row per run under PATH (a run folder or a whole sweep), the overrides that vary,
status, final metrics, per-layer gain, first/last ratio, verdict and speed; writes report.csv and report.png."""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from typing import Any, Optional

from gradexp.report_figure import DPI, draw  # matplotlib itself is imported only when a figure is drawn
from gradexp.runs import RunRecord, find_runs, load_run, varying_keys

EXIT_BAD_INPUT = 2
METRICS = ("loss/train", "loss/val", "acc/val")
VERDICT_STYLE = {"healthy": "green", "vanishing": "blue", "exploding": "red", "diverged": "magenta"}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gradexp report", description=__doc__.split(";")[0])
    parser.add_argument("path", help="a run folder or a sweep folder (e.g. multirun/2024-05-01/12-00-00)")
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
    if not 10 <= args.dpi <= 600:
        return _bad(f"invalid value for --dpi: {args.dpi} (allowed: an integer from 10 to 600)")
    if not os.path.isdir(args.path):
        return _bad(f"no such folder: {args.path!r} (allowed: a run folder or a sweep folder)")
    folders = find_runs(args.path)
    if not folders:
        return _bad(f"no runs under {args.path!r} (a run folder holds .hydra/ or summary.json)")
    records = [load_run(folder, args.path) for folder in folders]
    keys = varying_keys(records)
    theory = any(r.theory_gain is not None for r in records)
    time = any(r.time_gain is not None for r in records)
    rows = [row(r, keys, theory, time) for r in records]
    columns = list(rows[0])
    if args.sort:
        descending, key = args.sort.startswith("-"), args.sort.lstrip("-")
        if key not in columns:
            return _bad(f"invalid value for --sort: {args.sort!r} (allowed: {' | '.join(columns)})")
        rows = sort_rows(rows, key, descending)
    out = args.out or args.path
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "report.csv"), "w", newline="") as f:
        f.write(to_csv(rows))
    figure_path = draw(records, keys, os.path.join(out, "report.png"), args.dpi)
    _print(rows, args.format, len(records), figure_path, out)
    return 0


def row(r: RunRecord, keys: list[str], theory: bool = False, time: bool = False) -> dict[str, Any]:
    """One run as ordered columns; the overrides shown are the varying ones (all of them for a single run)."""
    shown = {k: r.overrides.get(k, "") for k in keys} if keys else {"overrides": " ".join(f"{k}={v}" for k, v in r.overrides.items())}
    out = {"run": r.path, **shown, "status": r.status}
    out.update({m: r.final.get(m) for m in METRICS})
    out.update({"gain": r.gain, "first/last": r.ratio, "verdict": r.verdict.get("label", "")})
    if theory:  # summary["theory"] (MLPs): the gain mean-field theory predicts for this init and activation
        out["theory gain"] = r.theory_gain
        out["measured gain, step 0"] = r.theory_measured  # with its spread: agreement vs one net's noise
    if time:  # summary["bptt"] (recurrent runs): factor per time step travelled backward
        out["time gain"] = r.time_gain
    out["steps/s"] = r.steps_per_s
    out["evidence"] = r.verdict.get("evidence", "")
    return out


def sort_rows(rows: list[dict[str, Any]], key: str, descending: bool) -> list[dict[str, Any]]:
    """Numbers numerically, text alphabetically; runs without a value for `key` last in either direction."""
    def missing(value: Any) -> bool:
        return value is None or value == "" or (isinstance(value, float) and math.isnan(value))

    present = [r for r in rows if not missing(r[key])]
    present.sort(key=lambda r: (1, r[key]) if isinstance(r[key], str) else (0, r[key]), reverse=descending)
    return present + [r for r in rows if missing(r[key])]


def to_csv(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _print(rows: list[dict[str, Any]], fmt: str, n: int, figure: Optional[str], out: str) -> None:
    if fmt == "csv":
        sys.stdout.write(to_csv(rows))
    elif fmt == "json":
        json.dump(rows, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        from rich.console import Console

        console = Console() if sys.stdout.isatty() else Console(width=200)  # piped: don't squeeze to 80 columns
        console.print(table(rows, n))
        wrote = [os.path.join(out, "report.csv")] + ([figure] if figure else [])
        console.print("wrote " + ", ".join(wrote))


def table(rows: list[dict[str, Any]], n: int):
    from rich.table import Table

    columns = [c for c in rows[0] if c != "evidence"]
    t = Table(title=f"gradexp report: {n} run{'s' * (n != 1)}", header_style="bold")
    numeric = (*METRICS, "gain", "first/last", "theory gain", "time gain", "steps/s")
    for column in columns:
        t.add_column(column, justify="right" if column in numeric else "left", no_wrap=column != "overrides",
                     max_width=32 if column == "run" else None, overflow="ellipsis")
    for r in rows:
        t.add_row(*[_cell(column, r[column]) for column in columns])
    return t


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if column == "verdict" and value:
        return f"[{VERDICT_STYLE.get(value, 'white')}]{value}[/]"
    if isinstance(value, float):
        if column == "steps/s":
            return f"{value:.0f}"
        return f"{value:.3g}" if column != "first/last" else f"{value:.2g}"
    return str(value)


def _bad(message: str) -> int:
    print(f"gradexp report: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT
