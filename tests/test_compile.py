"""train.compile: ordinary steps through torch.compile (whole graph), logging steps eager on the same parameters.
Compiling on a small shared CPU takes tens of seconds, so the runs are slow-marked and few."""
from __future__ import annotations

import pytest
import torch

from gradexp.config.schema import ConfigError, validate
from gradexp.training import factory as build
from gradexp.training.loop import train
from tests.conftest import Capture, compose_config

SMALL = ["data=blobs", "device=cpu", "data.n_train=64", "data.n_val=16", "train.steps=6", "log.every=2",
         "train.eval_every=3"]


def logged(overrides, base=SMALL):
    cfg = compose_config([*base, *overrides])
    validate(cfg)
    sink = Capture()
    outcome = train(build.run(cfg, [sink]), build.settings(cfg))
    assert outcome.status == "completed"
    return sink.steps


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["train.precision=bf16"]], ids=["fp32", "bf16"])
def test_compiled_run_logs_the_eager_values_without_recompiling(extra):
    from torch._dynamo.utils import counters

    eager = logged(extra)
    torch._dynamo.reset()
    counters.clear()
    compiled = logged(["train.compile=true", *extra])
    # steps 1 and 3 are ordinary (compiled); 0, 2, 4, 5 log eagerly: one graph, compiled once, never again
    assert counters["stats"]["unique_graphs"] == 1
    assert sum(counters["recompiles"].values()) == 0
    assert set(compiled) == set(eager)
    for step, values in eager.items():
        assert set(compiled[step]) == set(values)
        for tag, value in values.items():
            assert compiled[step][tag] == pytest.approx(value, rel=2e-3 if extra else 1e-4, abs=1e-7), (step, tag)


@pytest.mark.slow
@pytest.mark.parametrize("family", [[], ["model=transformer", "data=copy", "model.causal=true"]], ids=["mlp", "transformer"])
def test_ordinary_steps_have_no_graph_break(family):
    cfg = compose_config([*SMALL, *family])
    run = build.run(cfg)
    x, _ = run.batches.next()
    explanation = torch._dynamo.explain(run.model)(run.task.inputs(x))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


def test_missing_compiler_toolchain_is_one_line(monkeypatch):
    import torch._inductor.cpp_builder as cpp_builder

    def missing():
        raise RuntimeError("Failed to find a working C++ compiler. Tried: ['g++']")
    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)
    with pytest.raises(ConfigError) as err:
        validate(compose_config([*SMALL, "train.compile=true"]))
    assert err.value.key == "train.compile" and "\n" not in str(err.value)
    assert "compiler toolchain is missing (Failed to find a working C++ compiler" in str(err.value)


def test_compile_with_a_recurrent_model_is_refused():
    with pytest.raises(ConfigError) as err:
        validate(compose_config(["model=lstm", "data=adding", "device=cpu", "train.compile=true"]))
    assert err.value.key == "train.compile" and "false for model=lstm" in str(err.value)
