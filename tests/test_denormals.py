"""train.flush_denormal (gradexp/training/denormals.py): subnormals read as 0 only where asked, for that run only, and
recorded beside the numbers they shaped."""
from __future__ import annotations

import json
import os

import pytest
import torch

from gradexp.training.denormals import flushing

SUBNORMAL = 1e-40  # below float32's smallest normal (1.2e-38), above its smallest subnormal (1.4e-45)


def _product() -> float:
    return (torch.full((4,), SUBNORMAL) * torch.ones(4)).sum().item()


def test_flushing_zeroes_subnormals_inside_and_leaves_them_after():
    assert _product() > 0
    with flushing(True) as flushed:
        inside = _product()
    if not flushed:
        pytest.skip("this CPU cannot flush subnormals (torch.set_flush_denormal returned False)")
    assert inside == 0.0
    assert _product() > 0  # the next run of the process (a sweep's basic launcher) starts unflushed
    with flushing(False) as flushed:
        assert not flushed and _product() > 0


def test_a_run_with_flush_denormal_records_it_and_leaves_the_process_as_it_was(run_tiny):
    outcome, run_dir = run_tiny(["train.flush_denormal=true"])
    perf = json.load(open(os.path.join(run_dir, "summary.json")))["perf"]
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush subnormals")
    assert perf["flush_denormal"] is True and _product() > 0
    outcome, other = run_tiny([], name="plain")
    assert "flush_denormal" not in json.load(open(os.path.join(other, "summary.json")))["perf"]
