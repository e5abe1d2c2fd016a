"""How `gradexp report` groups runs for the printed table: one table per sweep (a folder like multirun/ holds many,
each varying its own factors), and within a sweep the runs that differ only in `seed` folded into one row with the
mean and spread of every number. report.csv and --format csv/json keep one row per run, every column."""
from __future__ import annotations

import os
import statistics
from typing import Any

from gradexp.report.runs import RunRecord

SEED = "seed"


def by_sweep(records: list[RunRecord]) -> dict[str, list[RunRecord]]:
    """Runs keyed by the folder that holds them (a sweep folder, or a date folder of single runs), in order."""
    groups: dict[str, list[RunRecord]] = {}
    for record in records:
        groups.setdefault(sweep_of(record), []).append(record)
    return groups


def sweep_of(record: RunRecord) -> str:
    return os.path.dirname(record.path) or "."


def job_name(path: str) -> str:
    """'…/12_activation=relu,init=…' -> '12': Hydra's job number names a sweep's job; the factors have columns."""
    base = os.path.basename(path) or path
    number = base.split("_", 1)[0]
    return number if number.isdigit() else base


def seed_folds(records: list[RunRecord]) -> list[list[int]]:
    """Indices of the runs that have the same overrides apart from a seed that varies (one list per row to print);
    runs that repeat one setting without varying the seed stay apart."""
    if len({r.overrides.get(SEED) for r in records}) == 1:
        return [[i] for i in range(len(records))]
    folds: dict[tuple, list[int]] = {}
    for i, record in enumerate(records):
        key = tuple(sorted((k, v) for k, v in record.overrides.items() if k != SEED))
        folds.setdefault((record.path,) if record.problem else key, []).append(i)  # an unreadable run stands alone
    return list(folds.values())


def fold(rows: list[dict[str, Any]], numeric: tuple[str, ...]) -> dict[str, Any]:
    """One row for runs that differ only in seed: numbers as (mean, spread), text as the common value or a count."""
    if len(rows) == 1:
        return dict(rows[0])
    out: dict[str, Any] = {}
    for column in rows[0]:
        values = [r[column] for r in rows]
        if column in numeric:
            out[column] = mean_spread([v for v in values if isinstance(v, (int, float))])
        else:
            out[column] = _common(values)
    out[SEED] = f"{len(rows)} seeds"
    return out


def mean_spread(values: list[float]) -> tuple[float, float] | None:
    """(mean, sample standard deviation) of the finite values; None when there are none."""
    finite = [float(v) for v in values if v == v and abs(v) != float("inf")]
    if not finite:
        return None
    if len(set(finite)) == 1:  # equal values: spread 0, not stdev's rounding residue (3e-17 for three 0.408s)
        return finite[0], 0.0
    # in units of the largest: fsum and the squares overflowed for values near float's largest (1e308 and 1.7e308,
    # found by an adversarial test: a traceback after report.csv was written)
    unit = max(abs(v) for v in finite)
    scaled = [v / unit for v in finite]
    return statistics.fmean(scaled) * unit, statistics.stdev(scaled) * unit


def _common(values: list[Any]) -> str:
    """'completed' when all agree; '2 completed, 1 diverged' when they do not."""
    counts: dict[str, int] = {}
    for value in values:
        counts[str(value)] = counts.get(str(value), 0) + 1
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{n} {value}" for value, n in counts.items())
