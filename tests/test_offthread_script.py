"""scripts/bench_offthread.py (why the instruments stay on the training thread) runs and prints its exchange rate."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_bench_offthread_script_runs(capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    try:
        import bench_offthread
    finally:
        sys.path.pop(0)
    assert bench_offthread.main(["--repeats", "1", "--steps", "10"]) == 0
    out = capsys.readouterr().out
    assert "cost on the training thread per us of work beside it (thread):" in out and "(process)" in out
