"""The unrolled recurrent path (what the bptt probe runs) against the fused kernels and against plain autograd, in
float64: same outputs, same parameter and input gradients, and every h_t's gradient the total dL/dh_t. The LSTM's
backward is written out by hand (models/lstm_bptt.py), so it is also checked for every activation, for buffers
reused across steps, and for a graph run backward twice."""
from __future__ import annotations

import pytest
import torch

from gradexp.models import MODELS
from gradexp.models.lstm_bptt import lstm_unrolled

B, T, FEAT, WIDTH, DEPTH = 3, 7, 4, 5, 3
TIGHT = dict(rtol=1e-12, atol=1e-12)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def build(family: str, activation: str = "tanh", norm: str = "layernorm"):
    return MODELS[family]((T, FEAT), 2, DEPTH, WIDTH, False, activation, norm, readout_steps=T).double()


def forward_backward(model, x: torch.Tensor, unrolled: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Output and dLoss/d(x, every parameter); `unrolled` sets a no-op on_step on every block."""
    for block in model.layers:
        block.on_step = (lambda t, h: None) if unrolled else None
    assert all(block.fused != unrolled for block in model.layers)
    out = model(x)
    grads = torch.autograd.grad(out.square().sum() + out.sum(), [x, *model.parameters()])
    for block in model.layers:
        block.on_step = None
    return out, list(grads)


@pytest.mark.parametrize("family", ["rnn", "lstm", "gru"])
def test_unrolled_matches_fused_float64_stacked(family):
    model = build(family)
    x = torch.randn(B, T, FEAT, dtype=torch.float64, requires_grad=True)
    out_fused, grads_fused = forward_backward(model, x, unrolled=False)
    out_loop, grads_loop = forward_backward(model, x, unrolled=True)
    torch.testing.assert_close(out_loop, out_fused, **TIGHT)
    names = ["x", *(name for name, _ in model.named_parameters())]
    for name, a, b in zip(names, grads_loop, grads_fused):
        torch.testing.assert_close(a, b, **TIGHT, msg=lambda m, name=name: f"{family} {name}: {m}")


def autograd_lstm(x, rnn, act, on_step):
    """The LSTM recurrence as plain autograd ops, one step at a time (the oracle for lstm_bptt)."""
    w_ih, w_hh, b_ih, b_hh = rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0
    h = c = x.new_zeros(x.shape[0], rnn.hidden_size)
    outs = []
    for t in range(x.shape[1]):
        i, f, g, o = (x[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * act(g)
        h = torch.sigmoid(o) * act(c)
        on_step(t, h)
        outs.append(h)
    return torch.stack(outs, dim=1)


@pytest.mark.parametrize("activation", ["tanh", "relu", "gelu", "sigmoid", "softsign", "identity"])
def test_lstm_backward_by_hand_matches_autograd(activation):
    block = build("lstm", activation).layers[0]
    x = torch.randn(B, T, FEAT, dtype=torch.float64, requires_grad=True)
    params = [x, *block.rnn.parameters()]
    weights = torch.randn(B, T, WIDTH, dtype=torch.float64)  # every step's output reaches the loss, with its own weight
    results = []
    for run in (lambda on_step: lstm_unrolled(x, block.rnn, block.act, on_step, []),
                lambda on_step: autograd_lstm(x, block.rnn, block.act, on_step)):
        states = []
        out = run(lambda t, h: states.append(h))
        loss = (out * weights).sum() + out[:, -1].square().sum()
        results.append((out, torch.autograd.grad(loss, [*params, *states])))
    (out, grads), (out_ref, grads_ref) = results
    torch.testing.assert_close(out, out_ref, **TIGHT)
    assert len(grads) == len(grads_ref) == len(params) + T
    for k, (a, b) in enumerate(zip(grads, grads_ref)):  # x, 4 parameters, then dL/dh_t for t = 0..T-1
        torch.testing.assert_close(a, b, **TIGHT, msg=lambda m, k=k: f"gradient {k}: {m}")
    assert grads[len(params)].abs().sum() > 0  # h_0 gets gradient only through the recurrence


def test_lstm_hooks_on_h_receive_total_grad_and_buffers_are_reused():
    block = build("lstm").layers[0]
    pool: list = []
    x = torch.randn(B, T, FEAT, dtype=torch.float64)
    hooked: dict[int, torch.Tensor] = {}
    states: list[torch.Tensor] = []

    def on_step(t, h):
        states.append(h)
        h.register_hook(lambda g, t=t: hooked.__setitem__(t, g))

    out = lstm_unrolled(x, block.rnn, block.act, on_step, pool)
    loss = out[:, -1].square().sum()
    oracle = torch.autograd.grad(loss, states, retain_graph=True)  # a first backward through the graph
    hooked.clear()
    loss.backward()  # the second one, on buffers given back to the pool once
    assert len(pool) == 1
    for t in range(T):
        torch.testing.assert_close(hooked[t], oracle[t], **TIGHT)
    buffers = pool[0]
    again = lstm_unrolled(x, block.rnn, block.act, None, pool)  # takes the same buffers, same values
    torch.testing.assert_close(again, out.detach(), **TIGHT)
    again.sum().backward()
    assert pool == [buffers]


def test_lstm_two_forwards_before_backward_keep_their_own_buffers():
    block = build("lstm").layers[0]
    pool: list = []
    x1, x2 = (torch.randn(B, T, FEAT, dtype=torch.float64) for _ in range(2))
    out1 = lstm_unrolled(x1, block.rnn, block.act, None, pool)
    out2 = lstm_unrolled(x2, block.rnn, block.act, None, pool)
    g1 = torch.autograd.grad(out1.sum(), list(block.rnn.parameters()))
    g2 = torch.autograd.grad(out2.sum(), list(block.rnn.parameters()), retain_graph=True)
    for x, g in ((x1, g1), (x2, g2)):
        ref = torch.autograd.grad(autograd_lstm(x, block.rnn, block.act, lambda t, h: None).sum(),
                                  list(block.rnn.parameters()))
        for a, b in zip(g, ref):
            torch.testing.assert_close(a, b, **TIGHT)
    assert len(pool) == 2
    held = [lstm_unrolled(x, block.rnn, block.act, None, pool) for x in (x1, x2)]  # out2's buffers among them
    assert not pool and len(held) == 2
    with pytest.raises(RuntimeError, match="reused"):
        out2.sum().backward()


def test_lstm_without_grad_hands_plain_states():
    block = build("lstm").layers[0]
    x = torch.randn(B, T, FEAT, dtype=torch.float64)
    seen = []
    with torch.no_grad():
        out = lstm_unrolled(x, block.rnn, block.act, lambda t, h: seen.append((t, h.requires_grad)), [])
    assert not out.requires_grad and seen == [(t, False) for t in range(T)]
    torch.testing.assert_close(out, block.rnn(x)[0], **TIGHT)


@pytest.mark.slow
def test_bench_unrolled_script_runs(capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import bench_unrolled

    assert bench_unrolled.main(["--repeats", "1", "--override", "data.seq_len=5"]) == 0
    out = capsys.readouterr().out
    assert "bptt - fused" in out and "two bptt steps in a 100-step run add" in out


def test_lstm_block_keeps_its_buffers_between_unrolled_steps_only():
    """Consecutive unrolled steps (log.bptt_every=1) reuse one set of buffers; the first fused step lets them go
    (held through fused steps they slowed those down, models/rnn.py)."""
    block = build("lstm").layers[0]
    x = torch.randn(B, T, FEAT, dtype=torch.float64)
    block.on_step = lambda t, h: None
    block(x).sum().backward()
    assert len(block._workspaces) == 1
    buffers = block._workspaces[0]
    block(x).sum().backward()
    assert block._workspaces == [buffers]  # the same buffers again
    block.on_step = None
    fused = block(x)
    assert block._workspaces == []
    torch.testing.assert_close(fused, block.norm(block.rnn(x)[0]), **TIGHT)
