"""The CUDA path, checked like the CPU one (needs CUDA; skipped without it; `make gpu-check` runs this tier):
every step-0 number against plain torch on the same device, exact norms of CUDA tensors down to the smallest
subnormal against float64 on the host, and a run that ends with summary.json on CUDA."""
from __future__ import annotations

import json
import os

import pytest
import torch

from gradexp.probes.norms import exact_norms
from tests.test_exact_norms import f64_norm, ladder
from tests.test_oracle import FAMILIES, oracle_step0, read_scalars

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("overrides", FAMILIES, ids=lambda o: " ".join(o))
def test_logged_step0_on_cuda_matches_plain_torch(run_tiny, overrides):
    overrides = [*overrides, "device=cuda"]
    outcome, run_dir = run_tiny(overrides)
    assert outcome.status == "completed"
    logged, expected = read_scalars(run_dir), oracle_step0(overrides)
    for tag, value in expected.items():
        assert logged[tag][0] == pytest.approx(value, rel=1e-4, abs=1e-7), tag
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    assert summary["status"] == "completed" and summary["layers"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_exact_norms_of_cuda_tensors_down_to_the_smallest_subnormal(dtype):
    tensors = [t.cuda() for t in ladder(dtype, seed=0)]
    got = torch.stack(exact_norms(tensors)).cpu()
    for value, t in zip(got.tolist(), tensors):
        assert value == pytest.approx(f64_norm(t.cpu()), rel=1e-5), t.dtype
