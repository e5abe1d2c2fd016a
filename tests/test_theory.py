"""The mean-field baseline: its integrals against Monte Carlo, its weight variances against the initialized
weights, its logged numbers against the measured ones, and its prediction against real wide networks."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

from gradexp.analysis import theory
from gradexp.analysis.flow import per_layer_gain
from gradexp.models import MLP, init_weights, make_activation
from gradexp.config.registry import ACTIVATIONS
from tests.conftest import compose_config
from tests.test_oracle import read_scalars

SCHEMES = ["default", "xavier_normal", "xavier_uniform", "kaiming_normal", "kaiming_uniform", "orthogonal", "normal"]


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("q", [0.05, 1.0, 4.0])
def test_moments_match_monte_carlo(activation, q):
    gen = torch.Generator().manual_seed(0)
    z = (math.sqrt(q) * torch.randn(2_000_000, generator=gen, dtype=torch.float64)).requires_grad_()
    phi = make_activation(activation).double()(z)
    (dphi,) = torch.autograd.grad(phi.sum(), z)
    phi2, dphi2 = theory.moments(activation, q)
    assert phi2 == pytest.approx(phi.detach().pow(2).mean().item(), rel=0.01)
    assert dphi2 == pytest.approx(dphi.pow(2).mean().item(), rel=0.01)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("fan_in", [64, 512])
def test_weight_variances_match_initialized_weights(scheme, fan_in):
    torch.manual_seed(0)
    init = compose_config([f"init={scheme}", "init.gain=1.3", "init.std=0.05"]).init
    model = MLP((fan_in,), 10, 2, 512, False, "tanh", "none")
    init_weights(model, init.scheme, gain=init.gain, std=init.std, activation="tanh")
    linear = model.layers[0].linear  # weight (512, fan_in)
    sw2, sb2 = theory.weight_variances(init, "tanh", fan_in, 512)
    assert sw2 == pytest.approx(fan_in * linear.weight.pow(2).mean().item(), rel=0.03)
    assert sb2 == pytest.approx(linear.bias.pow(2).mean().item(), rel=0.2, abs=1e-12)


def test_relu_recursion_by_hand():
    """Xavier on relu: sigma_w^2 = 2 fan_in / (fan_in + fan_out), E[relu'^2] = 1/2, q halves through relu."""
    cfg = compose_config(["activation=relu", "init=xavier_normal", "model.depth=3", "model.width=256"])
    mf = theory.mean_field(cfg, input_dim=64, input_mean_square=2.0)
    s0 = 2 * 64 / (64 + 256)
    assert mf.q == pytest.approx([s0 * 2.0, s0 * 1.0, s0 / 2])
    assert mf.chi == pytest.approx([s0 / 2, 0.5, 0.5])
    assert mf.predicted_norms(3.0) == pytest.approx([1.5, 3 * math.sqrt(0.5), 3.0])


def test_logged_theory_matches_prediction_and_measurement(run_tiny):
    overrides = ["activation=tanh", "init=xavier_normal", "model.depth=4"]
    _, run_dir = run_tiny(overrides)
    logged = read_scalars(run_dir)
    section = json.load(open(os.path.join(run_dir, "summary.json")))["theory"]
    cfg = compose_config(overrides)
    mf = theory.mean_field(cfg, input_dim=64, input_mean_square=1.0)  # digits: globally standardized
    names = [f"layers.{i}" for i in range(4)]
    measured = [logged[f"act_grad_norm/{n}"][0] for n in names]
    predicted = mf.predicted_norms(measured[-1])
    for name, p, m in zip(names, predicted, measured):
        assert list(logged[f"theory/act_grad_norm/{name}"]) == [0]  # the first logged step only
        assert logged[f"theory/act_grad_norm/{name}"][0] == pytest.approx(p, rel=1e-3)  # input mean square ~ 1
        assert section["per_layer"][name]["measured"] == pytest.approx(m, rel=1e-6)
    assert section["measured_gain"] == pytest.approx(per_layer_gain(measured[1:-1]), rel=1e-6)
    assert section["predicted_gain"] == pytest.approx(per_layer_gain(predicted[1:-1]), rel=1e-3)


@pytest.mark.parametrize("overrides", [["norm=batchnorm"], ["model.residual=true"], ["model=rnn"]],
                         ids=lambda o: o[0])
def test_theory_is_null_where_it_does_not_apply(run_tiny, overrides):
    _, run_dir = run_tiny(overrides)
    assert json.load(open(os.path.join(run_dir, "summary.json")))["theory"] is None
    assert not any(tag.startswith("theory/") for tag in read_scalars(run_dir))


@pytest.mark.parametrize("activation,init", [
    ("relu", "kaiming_normal"), ("relu", "xavier_normal"), ("tanh", "xavier_normal"), ("sigmoid", "xavier_normal"),
])
def test_wide_network_follows_theory_within_10_percent(run_tiny, activation, init):
    overrides = [f"activation={activation}", f"init={init}", "model.width=256", "model.depth=8",
                 "train.batch_size=128", "train.steps=1"]
    _, run_dir = run_tiny(overrides)
    section = json.load(open(os.path.join(run_dir, "summary.json")))["theory"]
    assert section["measured_gain"] == pytest.approx(section["predicted_gain"], rel=0.10)
    layers = list(section["per_layer"].values())
    for deeper, shallower in zip(layers[2:-1], layers[1:-2]):  # each single backward step in the middle
        measured = shallower["measured"] / deeper["measured"]
        assert measured == pytest.approx(deeper["gain"], rel=0.10)


def test_nonfinite_step0_leaves_valid_json(run_tiny):
    """A net whose step-0 gradients overflow still writes a parseable summary (null where not finite)."""
    outcome, run_dir = run_tiny(["init=normal", "init.std=1e12", "model.depth=3", "activation=identity"])
    text = open(os.path.join(run_dir, "summary.json")).read()
    assert outcome.status == "diverged"
    summary = json.loads(text, parse_constant=_reject)  # strict JSON: no NaN / Infinity constants
    assert summary["theory"]["per_layer"]["layers.2"]["measured"] is None


def _reject(constant: str):
    raise ValueError(f"summary.json holds the non-JSON constant {constant}")


def test_summary_gives_the_spread_beside_theory_and_the_alternatives(run_tiny):
    """Item 7 of issue 10: the measured gain comes with the range of per-layer gains and a ~95 % interval, computed
    here from the per-layer measured norms in numpy float64; the alternatives are mean-field gains of proper inits."""
    import numpy as np

    _, run_dir = run_tiny(["model.depth=8", "model.width=32", "activation=tanh", "train.steps=1"])
    theory = json.load(open(os.path.join(run_dir, "summary.json")))["theory"]
    measured = np.array([entry["measured"] for entry in theory["per_layer"].values()][1:-1], dtype=np.float64)
    logs = np.log(measured[:-1] / measured[1:])
    half = 2 * logs.std(ddof=1) / np.sqrt(len(logs))
    spread = theory["measured_gain_spread"]
    assert spread["interval95"] == pytest.approx([np.exp(logs.mean() - half), np.exp(logs.mean() + half)], rel=1e-9)
    assert spread["per_layer"] == pytest.approx([np.exp(logs.min()), np.exp(logs.max())], rel=1e-9)
    assert set(theory["alternatives"]) == {"init=xavier_normal", "init=kaiming_normal"}
    assert theory["alternatives"]["init=xavier_normal"] > theory["predicted_gain"]  # tanh: Xavier lifts PyTorch's default
