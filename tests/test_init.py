"""init_weights against the torch.nn.init formulas: variances, orthogonality, per-gate blocks, biases."""
import math

import pytest
import torch

from gradexp.models import CNN, GRU, LSTM, MLP, RNN, init_weights
from gradexp.config.registry import ACTIVATIONS

N = 512  # large square layers so the empirical variance is within ~1% of the formula
TOL = 0.05
# Independent of torch.nn.init.calculate_gain: the gains from the PyTorch docs, per our mapping
# (elu / gelu -> relu, softsign / identity -> linear).
ACT_GAIN_SQ = {"relu": 2.0, "leaky_relu": 2.0 / (1 + 0.01**2), "elu": 2.0, "selu": (3 / 4) ** 2,
               "gelu": 2.0, "mish": 2.0, "tanh": (5 / 3) ** 2, "sigmoid": 1.0, "softsign": 1.0, "identity": 1.0}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def mlp(width=N, norm="none"):
    return MLP((N,), 10, 2, width, False, "relu", norm)


def lstm(width=N, features=64):
    return LSTM((5, features), 10, 1, width, False, "tanh", "none", readout_steps=1)


def assert_var(w, expected):
    assert abs(w.var().item() / expected - 1) < TOL, (w.var().item(), expected)
    assert abs(w.mean().item()) < 0.1 * math.sqrt(expected)


@pytest.mark.parametrize("scheme", ["xavier_normal", "xavier_uniform"])
@pytest.mark.parametrize("gain", [1.0, 2.5])
def test_xavier_variance(scheme, gain):
    model = mlp()
    init_weights(model, scheme, gain=gain, std=0.0, activation="relu")
    assert_var(model.layers[1].linear.weight, gain**2 * 2 / (N + N))
    assert_var(model.layers[0].linear.weight, gain**2 * 2 / (N + N))


@pytest.mark.parametrize("scheme", ["kaiming_normal", "kaiming_uniform"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_kaiming_variance(scheme, activation):
    model, gain = mlp(), 0.7
    init_weights(model, scheme, gain=gain, std=0.0, activation=activation)
    assert_var(model.layers[1].linear.weight, ACT_GAIN_SQ[activation] * gain**2 / N)


def test_kaiming_conv_uses_fan_in_with_kernel():
    model = CNN((64, 8, 8), 10, 2, 64, False, "relu", "none")
    init_weights(model, "kaiming_normal", gain=1.0, std=0.0, activation="relu")
    assert_var(model.layers[1].conv.weight, 2.0 / (64 * 9))


def test_normal_variance():
    model = mlp()
    init_weights(model, "normal", gain=3.0, std=0.02, activation="relu")
    assert_var(model.layers[1].linear.weight, (0.02 * 3.0) ** 2)


@pytest.mark.parametrize("gain", [1.0, 1.5])
def test_orthogonal(gain):
    model = mlp(width=64)
    init_weights(model, "orthogonal", gain=gain, std=0.0, activation="tanh")
    w = model.layers[1].linear.weight
    torch.testing.assert_close(w @ w.T, gain**2 * torch.eye(64), atol=1e-4, rtol=0)


def test_biases_zero_norms_untouched():
    model = MLP((N,), 10, 3, 32, True, "relu", "layernorm")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.3)  # so a no-op init and a torch default cannot pass for zero
    init_weights(model, "xavier_normal", gain=1.0, std=0.0, activation="relu")
    for name, p in model.named_parameters():
        if ".norm." in name:
            assert (p == 0.3).all(), name
        elif name.endswith("bias"):
            assert (p == 0).all(), name
        else:
            assert not (p == 0.3).all(), name


def test_recurrent_biases_zero():
    model = GRU((5, 4), 10, 2, 16, False, "tanh", "batchnorm", readout_steps=1)
    init_weights(model, "orthogonal", gain=1.0, std=0.0, activation="tanh")
    biases = [n for n, _ in model.named_parameters() if "bias" in n and ".norm." not in n]
    assert "layers.1.rnn.bias_hh_l0" in biases
    assert all((dict(model.named_parameters())[n] == 0).all() for n in biases)


def test_lstm_orthogonal_per_gate_block():
    model = lstm(width=32)
    init_weights(model, "orthogonal", gain=1.2, std=0.0, activation="tanh")
    w_hh = model.layers[0].rnn.weight_hh_l0  # (4H, H): four (H, H) gate blocks i, f, g, o
    for block in w_hh.chunk(4):
        torch.testing.assert_close(block @ block.T, 1.44 * torch.eye(32), atol=1e-4, rtol=0)


@pytest.mark.parametrize("make,gates", [(lstm, 4), (lambda: GRU((5, 64), 10, 1, N, False, "tanh", "none", 1), 3)])
def test_xavier_fans_per_gate(make, gates):
    model = make()
    init_weights(model, "xavier_normal", gain=1.0, std=0.0, activation="tanh")
    rnn = model.layers[0].rnn
    for block in rnn.weight_ih_l0.chunk(gates):  # fans of one gate (H, F), not of the stacked (G*H, F)
        assert_var(block, 2 / (N + 64))
    assert_var(rnn.weight_hh_l0, 2 / (N + N))


def test_recurrent_scheme_for_weight_hh_only():
    model = lstm(width=32)
    init_weights(model, "normal", gain=1.0, std=0.5, activation="tanh", recurrent="orthogonal")
    rnn = model.layers[0].rnn
    for block in rnn.weight_hh_l0.chunk(4):
        torch.testing.assert_close(block @ block.T, torch.eye(32), atol=1e-4, rtol=0)
    assert_var(rnn.weight_ih_l0, 0.25)


def test_default_keeps_torch_values():
    for make in (mlp, lstm):
        torch.manual_seed(1)
        reference = make(width=16)
        torch.manual_seed(1)
        model = make(width=16)
        init_weights(model, "default", gain=5.0, std=1.0, activation="relu")
        for (name, p), q in zip(model.named_parameters(), reference.parameters()):
            assert torch.equal(p, q), name


@pytest.mark.parametrize("kw,match", [({"scheme": "he"}, "kaiming_normal"), ({"activation": "swish"}, "softsign"),
                                      ({"recurrent": "identity"}, "orthogonal")])
def test_unknown_names_raise(kw, match):
    args = {"scheme": "xavier_normal", "gain": 1.0, "std": 0.1, "activation": "relu", **kw}
    with pytest.raises(ValueError, match=match):
        init_weights(mlp(width=8), **args)


def test_recurrent_gain_scales_weight_hh_only():
    """Elman weight_hh orthogonal with recurrent_gain 1.5: W W^T = 1.5^2 I (spectral radius 1.5); weight_ih keeps gain."""
    model = RNN((5, 64), 10, 1, N, False, "tanh", "none", readout_steps=1)
    init_weights(model, "xavier_normal", gain=1.0, std=0.0, activation="tanh", recurrent="orthogonal",
                 recurrent_gain=1.5)
    rnn = model.layers[0].rnn
    torch.testing.assert_close(rnn.weight_hh_l0 @ rnn.weight_hh_l0.T, 2.25 * torch.eye(N), atol=1e-3, rtol=0)
    assert_var(rnn.weight_ih_l0, 2 / (N + 64))


def test_recurrent_gain_reaches_the_model_from_config():
    from gradexp.training import factory as build
    from tests.conftest import compose_config

    cfg = compose_config(["model=rnn", "init=orthogonal", "init.recurrent_gain=0.5", "init.gain=2.0"])
    dev = build.device(cfg)
    rnn = build.model(cfg, build.task(cfg, dev), dev).layers[0].rnn
    assert torch.linalg.matrix_norm(rnn.weight_hh_l0, ord=2).item() == pytest.approx(0.5, rel=1e-4)
    assert torch.linalg.matrix_norm(rnn.weight_ih_l0, ord=2).item() == pytest.approx(2.0, rel=1e-4)
