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


def test_fp16_on_cuda_unscaled_step0_matches_plain_torch():
    """Autocast and GradScaler on CUDA: the same hand-written oracle as the CPU test, on the device."""
    from gradexp.training import factory as build
    from gradexp.training.loop import train
    from tests.test_precision import BLOBS, Capture
    from tests.conftest import compose_config

    overrides = [o for o in BLOBS if o != "device=cpu"] + ["device=cuda", "train.precision=fp16"]
    cfg = compose_config(overrides)
    sink = Capture()
    run = build.run(cfg, [sink])
    assert train(run, build.settings(cfg)).status == "completed"
    task, dev = run.task, torch.device("cuda")
    model = build.model(cfg, task, dev)
    x, y = build.batches(cfg, task).next()
    with torch.autocast("cuda", dtype=torch.float16):
        loss = task.loss(model(x), y)
    grads = torch.autograd.grad(loss * 2.0**16, list(model.parameters()))
    for (name, _), g in zip(model.named_parameters(), grads):
        assert sink.steps[0][f"grad_norm/{name}"] == pytest.approx((g.double() / 2.0**16).norm().item(), rel=1e-4), name
    assert sink.steps[0]["amp/loss_scale"] == 2.0**16


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_compiled_mixed_precision_on_cuda_logs_the_eager_values(precision):
    from tests.test_compile import SMALL, logged

    base = [o for o in SMALL if o != "device=cpu"] + ["device=cuda"]
    eager = logged([f"train.precision={precision}"], base)
    torch._dynamo.reset()
    compiled = logged(["train.compile=true", f"train.precision={precision}"], base)
    for step, values in eager.items():
        for tag, value in values.items():
            assert compiled[step][tag] == pytest.approx(value, rel=5e-3, abs=1e-6), (step, tag)
