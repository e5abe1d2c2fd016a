"""The benchmark scripts whose figures the README and docs/profile.md cite still run and print what they cite."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest


def script(name: str):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


@pytest.mark.slow
def test_bench_offthread_script_runs(capsys):
    """scripts/bench_offthread.py: why the instruments stay on the training thread (its exchange rate)."""
    assert script("bench_offthread").main(["--repeats", "1", "--steps", "10"]) == 0
    out = capsys.readouterr().out
    assert "cost on the training thread per us of work beside it (thread):" in out and "(process)" in out


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("c++") is None, reason="Inductor's CPU kernels need a C++ compiler")
def test_bench_fused_script_compiles_the_same_numbers(capsys):
    """scripts/bench_fused.py: the four families' arithmetic eager against torch.compile (AOTInductor left out here:
    ~20 s of compiling); the compiled values agree with eager to float32 rounding."""
    assert script("bench_fused").main(["--repeats", "1", "--calls", "3", "--no-aot"]) == 0
    out = capsys.readouterr().out
    assert "torch.compile: 52 values, largest difference from eager" in out
    difference = float(out.split("largest difference from eager ")[1].split()[0])
    assert difference < 1e-5
    assert "eager" in out.splitlines()[-2] and "torch.compile" in out.splitlines()[-1]


@pytest.mark.slow
def test_bench_worker_script_hands_the_same_numbers_to_a_worker(capsys):
    """scripts/bench_worker.py: the floor's four families computed by a worker process from shared memory give
    handmade.py's numbers exactly (the same operators on copies of the same tensors), and the table is printed."""
    assert script("bench_worker").main(["--repeats", "1", "--only", "mlp", "--steps-scale", "0.02"]) == 0
    out = capsys.readouterr().out
    assert "its numbers against inline's: largest relative difference 0.0e+00" in out
    for every in (" 1", "25"):
        assert f"every {every}: plain" in out and "; worker " in out.split(f"every {every}:")[1].splitlines()[0]
