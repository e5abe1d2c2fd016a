"""The acceptance scripts of issue 11 at a reduced count (slow): bad inputs are one-line refusals that touch no
folder, and SIGKILLed runs resume to results identical to an uninterrupted run. Full counts: README, Reliability."""
from __future__ import annotations

import os
import sys

import pytest

pytestmark = pytest.mark.slow
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))

import fuzz_inputs  # noqa: E402
import inject_faults  # noqa: E402


def test_fuzz_inputs_reduced(capsys):
    assert len(fuzz_inputs.cases()) >= 80  # the full run covers every key and group
    code = fuzz_inputs.main(["--count", "10"])
    assert code == 0, capsys.readouterr().out


def test_inject_faults_reduced(capsys):
    code = inject_faults.main(["--kills", "2"])  # one at a random moment, one during a checkpoint write
    out = capsys.readouterr().out
    assert code == 0 and "2 SIGKILLs" in out, out
