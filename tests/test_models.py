"""Model families: shapes, naming, residual/norm semantics, fused == unrolled recurrence, gradients."""
import re

import pytest
import torch
import torch.nn.functional as F

from gradexp.models import GRU, LSTM, MODELS, RNN, make_activation
from gradexp.config.registry import ACTIVATIONS, MODELS as FAMILIES

B, T, FEAT, K = 4, 6, 3, 2  # batch, sequence length, features per step, readout steps
INPUT = {"mlp": (16,), "cnn": (2, 5, 5), "resnet": (2, 5, 5), "rnn": (T, FEAT), "lstm": (T, FEAT), "gru": (T, FEAT),
         "transformer": (T, FEAT)}
HIDDEN = {"resnet": 3 * 3 + 1}  # hidden layers at depth 3 where it is not 3: resnet's depth is blocks per stage, + stem
RECURRENT = [name for name, family in FAMILIES.items() if family.recurrent]
SEQUENCE = [name for name, family in FAMILIES.items() if family.inputs == ("sequence",)]  # (B, K, C) outputs
INPUT_LAYER = {"transformer": "embed"}  # parameters before the hidden layers: the transformer's input projection


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def build(family, depth=3, width=8, residual=False, activation="tanh", norm="none"):
    return MODELS[family](INPUT[family], 5, depth, width, residual, activation, norm, readout_steps=K)


def batch(family):
    return torch.randn(B, *INPUT[family])


@pytest.mark.parametrize("norm", ["none", "batchnorm", "layernorm"])
@pytest.mark.parametrize("family,residual", [("mlp", False), ("mlp", True), ("cnn", False),
                                             ("cnn", True), ("rnn", False), ("lstm", False), ("gru", False),
                                             ("transformer", False)])
def test_output_shape(family, residual, norm):
    out = build(family, residual=residual, norm=norm)(batch(family))
    assert out.shape == ((B, K, 5) if family in SEQUENCE else (B, 5))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("family", RECURRENT)
def test_recurrent_rejects_residual(family):
    with pytest.raises(ValueError, match="residual"):
        build(family, residual=True)


@pytest.mark.parametrize("kw,allowed", [({"activation": "swish"}, "softsign"), ({"norm": "rms"}, "layernorm")])
def test_unknown_names_list_allowed(kw, allowed):
    with pytest.raises(ValueError, match=allowed):
        build("mlp", **kw)


@pytest.mark.parametrize("family", list(MODELS))
def test_layer_names_in_forward_order(family):
    model = build(family, depth=3)
    names = [n for n, _ in model.named_parameters()]
    allowed = "|".join(["layers\\.\\d+", "head", *INPUT_LAYER.get(family, "").split()])
    assert all(re.match(rf"({allowed})\.", n) for n in names), names
    seen = [int(n.split(".")[1]) for n in names if n.startswith("layers.")]
    layers = HIDDEN.get(family, 3)
    assert seen == sorted(seen) and set(seen) == set(range(layers))
    order = []  # each hidden layer fires once, in index order, returning one tensor
    for i, layer in enumerate(model.layers):
        layer.register_forward_hook(lambda m, a, out, i=i: order.append((i, isinstance(out, torch.Tensor))))
    model(batch(family))
    assert order == [(i, True) for i in range(layers)]


@pytest.mark.parametrize("family", RECURRENT)
def test_recurrent_parameter_names(family):
    names = {n for n, _ in build(family, depth=2).named_parameters()}
    assert {"layers.0.rnn.weight_ih_l0", "layers.1.rnn.weight_hh_l0", "head.weight"} <= names


def test_mlp_residual_block_is_x_plus_f():
    model = build("mlp", residual=True, activation="relu", norm="layernorm")
    block, x = model.layers[1], torch.randn(B, 8)
    f = torch.relu(F.layer_norm(F.linear(x, block.linear.weight, block.linear.bias), (8,)))
    torch.testing.assert_close(block(x), x + f)
    assert not model.layers[0].residual


def test_cnn_layernorm_is_layer_norm_over_chw():
    block = build("cnn", norm="layernorm", activation="identity").layers[1]
    x = torch.randn(B, 8, 5, 5)
    y = F.conv2d(x, block.conv.weight, block.conv.bias, padding=1)
    torch.testing.assert_close(block(x), F.layer_norm(y, y.shape[1:]), atol=1e-5, rtol=1e-5)


def test_recurrent_batchnorm_pools_batch_and_time():
    block = build("gru", norm="batchnorm").layers[0]
    x = torch.randn(B, T, FEAT)
    raw = block.rnn(x)[0]  # (B, T, H)
    flat = F.batch_norm(raw.reshape(-1, 8), None, None, training=True)
    torch.testing.assert_close(block(x), flat.reshape(B, T, 8), atol=1e-5, rtol=1e-5)


def test_head_reads_last_steps():
    model = build("lstm", depth=1)
    x = batch("lstm")
    hidden = model.layers[0](x)
    torch.testing.assert_close(model(x), model.head(hidden[:, -K:]))


@pytest.mark.parametrize("family,activation", [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")])
def test_unrolled_matches_fused(family, activation):
    block = build(family, activation=activation).layers[0]
    x = torch.randn(B, T, FEAT, requires_grad=True)
    assert block.fused
    fused = block(x)
    g_fused = torch.autograd.grad(fused.square().sum(), [x, *block.parameters()])
    block.on_step = lambda t, h: None  # forces the Python loop
    assert not block.fused
    loop = block(x)
    g_loop = torch.autograd.grad(loop.square().sum(), [x, *block.parameters()])
    assert torch.allclose(loop, fused, atol=1e-5)
    for a, b in zip(g_loop, g_fused):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("family", RECURRENT)
def test_on_step_hooks_get_total_grad(family):
    model = build(family, depth=2, activation="relu")
    states, hooked = [], {}
    def on_step(t, h):
        states.append(h)
        h.register_hook(lambda g, t=t: hooked.__setitem__(t, g))
    model.layers[1].on_step = on_step
    loss = model(batch(family)).square().sum()
    assert [s.shape for s in states] == [(B, 8)] * T
    oracle = torch.autograd.grad(loss, states, retain_graph=True)
    loss.backward()
    for t in range(T):  # early steps get gradient only through the recurrence: proves h_t is the one reused
        torch.testing.assert_close(hooked[t], oracle[t])
    assert hooked[0].abs().sum() > 0


def test_unrolled_cells_use_activation():
    """One step from h0 = 0, by hand: the activation replaces tanh, gates stay sigmoid."""
    x = torch.randn(B, 1, FEAT)
    act = make_activation("softsign")
    lstm = LSTM((1, FEAT), 5, 1, 8, False, "softsign", "none", 1).layers[0]
    i, f, g, o = F.linear(x[:, 0], lstm.rnn.weight_ih_l0, lstm.rnn.bias_ih_l0 + lstm.rnn.bias_hh_l0).chunk(4, -1)
    c = torch.sigmoid(i) * act(g)
    torch.testing.assert_close(lstm(x)[:, 0], torch.sigmoid(o) * act(c))
    gru = GRU((1, FEAT), 5, 1, 8, False, "softsign", "none", 1).layers[0]
    xr, xz, xn = F.linear(x[:, 0], gru.rnn.weight_ih_l0, gru.rnn.bias_ih_l0).chunk(3, -1)
    hr, hz, hn = gru.rnn.bias_hh_l0.chunk(3)
    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
    torch.testing.assert_close(gru(x)[:, 0], (1 - z) * act(xn + r * hn))
    rnn = RNN((1, FEAT), 5, 1, 8, False, "sigmoid", "none", 1).layers[0]
    pre = F.linear(x[:, 0], rnn.rnn.weight_ih_l0, rnn.rnn.bias_ih_l0 + rnn.rnn.bias_hh_l0)
    torch.testing.assert_close(rnn(x)[:, 0], torch.sigmoid(pre))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_make_activation_matches_functional(activation):
    oracle = {"relu": F.relu, "leaky_relu": lambda v: F.leaky_relu(v, 0.01), "elu": F.elu, "selu": F.selu,
              "gelu": F.gelu, "mish": F.mish, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "softsign": F.softsign,
              "identity": lambda v: v}[activation]
    v = torch.linspace(-3, 3, 61)
    torch.testing.assert_close(make_activation(activation)(v), oracle(v))


@pytest.mark.parametrize("family", list(MODELS))
@pytest.mark.parametrize("activation", ["relu", "gelu", "sigmoid"])
def test_gradients_reach_every_parameter(family, activation):
    model = build(family, activation=activation, norm="batchnorm", residual=family in ("mlp", "cnn"))
    model(batch(family)).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
