"""Verdicts on constructed summaries: known per-layer profiles in, label/evidence/suggestions out."""
from __future__ import annotations

import os

import pytest

from gradexp.advice import Factors
from gradexp.config import ConfigError, DiagnoseConf, validate
from gradexp.diagnose import depth_flow, diagnose, time_flow
from tests.conftest import compose_config

CONF = DiagnoseConf()


def summary(first: list[float], last: list[float] | None = None, quantity: str = "act_grad_norm", **extra) -> dict:
    last = first if last is None else last
    layers = [{"name": f"layers.{i}", quantity: {"first": f, "last": l}} for i, (f, l) in enumerate(zip(first, last))]
    return {"status": "completed", "layers": layers, "nonfinite": None, **extra}


def geometric(gain: float, n: int = 20, top: float = 1.0) -> list[float]:
    """norms[i] = top * gain^(n-1-i): the gradient changes by `gain` per layer travelled backward."""
    return [top * gain ** (n - 1 - i) for i in range(n)]


def test_sigmoid_profile_is_vanishing_with_numbers_and_relu_advice():
    verdict = diagnose(summary(geometric(0.25)), Factors(activation="sigmoid", init="xavier_normal", depth=20), CONF)
    assert verdict["label"] == "vanishing"
    assert verdict["gain"] == pytest.approx(0.25)
    assert verdict["first_last_ratio"] == pytest.approx(0.25 ** 19)
    assert "shrinks ×0.25 per layer" in verdict["evidence"]
    assert f"layer 0 gets {0.25 ** 19:.2g} of layer 19's gradient" in verdict["evidence"]
    assert verdict["cause"].startswith("saturating activation")
    assert verdict["suggestions"][0] == "activation=relu init=kaiming_normal"
    assert "model.residual=true" in verdict["suggestions"] and "norm=batchnorm" in verdict["suggestions"]


def test_flat_profile_is_healthy_without_suggestions():
    verdict = diagnose(summary(geometric(0.97)), Factors(activation="relu", init="kaiming_normal"), CONF)
    assert verdict["label"] == "healthy" and verdict["suggestions"] == [] and verdict["cause"] == ""
    assert verdict["gain"] == pytest.approx(0.97)


def test_relu_with_xavier_blames_the_init_scale():
    verdict = diagnose(summary(geometric(0.7)), Factors(activation="relu", init="xavier_normal"), CONF)
    assert verdict["label"] == "vanishing" and verdict["cause"].startswith("init scale")
    assert verdict["suggestions"][0] == "init=kaiming_normal"


def test_exploding_and_the_worse_of_first_and_last_step_decides():
    s = summary(first=geometric(1.0), last=geometric(1.6), quantity="grad_norm")
    verdict = diagnose(s, Factors(activation="relu", init="kaiming_normal", init_gain=3.0), CONF)
    assert verdict["label"] == "exploding" and verdict["gain"] == pytest.approx(1.6)
    assert "‖∂L/∂θ‖ grows ×1.6 per layer at the last logged step" in verdict["evidence"]
    assert "(×1 at step 0)" in verdict["evidence"]
    assert "init.gain=1.0" in verdict["suggestions"] and "clip=norm_1.0" in verdict["suggestions"]


def test_ratio_threshold_catches_a_drop_the_gain_misses():
    norms = [1e-5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # fitted gain ~0.5 but first layer starved
    flow = depth_flow(summary(norms))
    loose = DiagnoseConf(vanishing_gain=0.1)
    assert flow.gain["last"] > loose.vanishing_gain
    assert diagnose(summary(norms), Factors(), loose)["label"] == "vanishing"


def test_diverged_wins_and_suggests_a_lower_lr_and_clipping():
    s = summary(geometric(1.0), status="diverged", nonfinite={"step": 7, "tensor": "loss/train"})
    verdict = diagnose(s, Factors(lr=0.5), CONF)
    assert verdict["label"] == "diverged"
    assert verdict["evidence"].startswith("loss/train became NaN/Inf at step 7.")
    assert verdict["suggestions"][:2] == ["optimizer.lr=0.05", "clip=norm_1.0"]


def test_bptt_vanishing_through_time_suggests_gated_cells():
    per_step = geometric(0.8, n=30)
    s = summary(geometric(1.0, n=2), bptt={"layers.0": {"first": per_step, "last": per_step}})
    verdict = diagnose(s, Factors(family="rnn", activation="tanh", depth=2), CONF)
    assert verdict["label"] == "vanishing" and verdict["cause"] == "recurrence (rnn)"
    assert verdict["time_gain"] == pytest.approx(0.8)
    assert "Through time in layers.0, ‖∂L/∂h_t‖ shrinks ×0.8 per time step" in verdict["evidence"]
    assert verdict["suggestions"][:2] == ["model=lstm", "model=gru"]


def test_missing_measurements_give_healthy_with_a_reason():
    assert time_flow({"layers": []}) is None and depth_flow({"layers": [{"name": "layers.0"}]}) is None
    verdict = diagnose({"status": "completed", "layers": [{"name": "layers.0"}]}, Factors(depth=1), CONF)
    assert verdict["label"] == "healthy" and "Fewer than two hidden layers" in verdict["evidence"]


def test_nonfinite_norms_are_skipped_not_fatal():
    norms = geometric(0.5, n=6)
    norms[2] = None
    assert depth_flow(summary(norms)).gain["first"] == pytest.approx(0.5)


@pytest.mark.parametrize("override", ["diagnose.vanishing_gain=1.2", "diagnose.exploding_gain=0.9",
                                      "diagnose.vanishing_ratio=0", "diagnose.time_exploding_gain=1"])
def test_thresholds_out_of_range_are_rejected(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        validate(compose_config([override]))


def test_a_run_stores_the_verdict_of_its_own_summary_and_shows_the_panel(tmp_path):
    import json

    from rich.console import Console

    from gradexp.experiment import run_experiment

    overrides = ["model.depth=5", "activation=sigmoid", "init=xavier_normal"]
    console = Console(record=True, width=200, file=open(os.devnull, "w"))
    outcome = run_experiment(compose_config(overrides), run_dir=str(tmp_path), overrides=overrides, console=console)
    saved = json.load(open(tmp_path / "summary.json"))
    cfg = compose_config(overrides)
    assert saved["verdict"] == json.loads(json.dumps(diagnose(saved, Factors.from_cfg(cfg), cfg.diagnose)))
    assert saved["verdict"] == json.loads(json.dumps(outcome.verdict))
    shown = console.export_text()
    assert saved["verdict"]["label"] in shown and saved["verdict"]["evidence"][:40] in shown
    for fix in saved["verdict"]["suggestions"]:
        assert f"gradexp run ... {fix}" in shown
