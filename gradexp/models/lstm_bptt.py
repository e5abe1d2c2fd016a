"""The LSTM's unrolled pass with its backward through time written out (rnn.RecurrentBlock, the unrolled path).

Autograd over a Python loop records a dozen nodes per time step; on CPU their bookkeeping cost more than the
arithmetic. Here the forward records nothing. With tanh, the fused kernel gives every h_t and the gates of all
steps are recomputed at once from them (one product, one sigmoid, one tanh); only the cell state's scan runs
step by step. Any other activation runs the same arithmetic one step at a time. Each h_t is handed to `on_step`
as a leaf that requires grad, and one Function does the whole backward: per time step one addmm (the output's
gradient + the recurrence) and four element-wise ops; dL/dx, the weight and bias gradients in one product each
over all steps. It returns the total dL/dh_t (through the recurrence and the output) as each leaf's gradient, so
a hook on h_t receives what it received on the autograd loop. The (T, B, 4H) buffers come from a per-block pool
and go back to it after the backward: a fresh 6.5 MB buffer page-faults in on every step.
Gates as in rnn.RecurrentBlock._step: i, f, g, o; i, f, o sigmoid; g and the cell state through the configured
activation (element-wise, as every registry entry is).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

OnStep = Optional[Callable[[int, Tensor], None]]
POOL_MAX_BYTES = 64 * 2**20  # a block keeps its buffers between steps up to this size (T=100, B=64, H=64: 33 MB)


def lstm_unrolled(x: Tensor, rnn: nn.LSTM, act: nn.Module, on_step: OnStep, pool: list) -> Tensor:
    """x (B, T, F) through the one-layer `rnn`'s parameters; returns the hidden states (B, T, H)."""
    batch, steps, _ = x.shape
    ws = _take(pool, steps, batch, rnn.hidden_size, x)
    ws["owner"] = owner = object()  # a graph whose buffers a later forward took finds another owner there
    grad = torch.is_grad_enabled()
    with torch.no_grad():  # the input projections of all steps in one product, both biases folded in
        w_ih = rnn.weight_ih_l0.t().contiguous().t()  # (4H, F) column-major: BLAS's fast path for small F
        torch.addmm(rnn.bias_ih_l0 + rnn.bias_hh_l0, x.transpose(0, 1).flatten(0, 1), w_ih.t(),
                    out=ws["pre"].view(steps * batch, -1))
        fused = isinstance(act, nn.Tanh)
        hs = _from_fused(x, rnn, ws) if fused else _step_by_step(rnn, act, on_step, grad, ws)
    for t, h in enumerate(hs):
        h.requires_grad_(grad)  # a leaf: its gradient is the total dL/dh_t (_Backward.backward)
        if on_step is not None and fused:
            on_step(t, h)
    if not grad:
        _give_back(pool, ws)
        return torch.stack(hs, dim=1)
    return _Backward.apply(x, rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0,
                           (ws, owner, act, pool), *hs)


def _gate_views(ws: dict[str, Tensor]) -> tuple[Tensor, ...]:
    """i, f, g, o of the activated gates and g of the pre-activations, each (T, B, H)."""
    steps, batch, gates4 = ws["pre"].shape
    return (*ws["gates"].view(steps, batch, 4, -1).unbind(2), ws["pre"].view(steps, batch, 4, -1)[:, :, 2])


def _from_fused(x: Tensor, rnn: nn.LSTM, ws: dict[str, Tensor]) -> list[Tensor]:
    """tanh, the fused kernel's own activation: h_t from the fused kernel (the values every other step trains
    on), then the gates of all steps at once from them; only the cell state's scan is left step by step."""
    hs = rnn(x)[0].unbind(1)
    pre, gates, cells, act_cells, h_prev = ws["pre"], ws["gates"], ws["cells"], ws["act_cells"], ws["h_prev"]
    if len(hs) > 1:  # + W_hh h_{t-1} for t >= 1, one product (h_{-1} = 0)
        torch.stack(hs[:-1], out=h_prev[:-1])
        pre[1:].flatten(0, 1).addmm_(h_prev[:-1].flatten(0, 1), rnn.weight_hh_l0.t())
    i, f, g, o, pre_g = _gate_views(ws)
    torch.sigmoid(pre, out=gates)  # i, f, o (g overwritten next)
    torch.tanh(pre_g, out=g)
    c = torch.mul(i[0], g[0], out=cells[0])
    for t in range(1, len(hs)):
        c = torch.mul(f[t], c, out=cells[t]).addcmul_(i[t], g[t])
    torch.tanh(cells, out=act_cells)
    return list(hs)


def _step_by_step(rnn: nn.LSTM, act: nn.Module, on_step: OnStep, grad: bool, ws: dict[str, Tensor]) -> list[Tensor]:
    """Any other activation: one step at a time, each h_t handed to on_step before step t+1 uses it."""
    pre, cells, act_cells = ws["pre"], ws["cells"], ws["act_cells"]
    i_s, f_s, g_s, o_s, pre_g = (part.unbind(0) for part in _gate_views(ws))
    h = c = pre.new_zeros(pre.shape[1], cells.shape[-1])
    w, hs = rnn.weight_hh_l0.t(), []
    for t, (pre_t, gates_t) in enumerate(zip(pre.unbind(0), ws["gates"].unbind(0))):
        pre_t.addmm_(h, w)                     # pre-activation gates (B, 4H)
        torch.sigmoid(pre_t, out=gates_t)      # i, f, o (g overwritten next)
        _apply(act, pre_g[t], out=g_s[t])
        c = torch.addcmul(f_s[t] * c, i_s[t], g_s[t], out=cells[t])
        h = o_s[t] * _apply(act, c, out=act_cells[t])
        hs.append(h)
        if on_step is not None:
            with torch.set_grad_enabled(grad):
                on_step(t, h.requires_grad_(grad))
    return hs


def _apply(act: nn.Module, z: Tensor, out: Tensor) -> Tensor:
    """act(z) into `out`; tanh (the default) without a temporary."""
    return torch.tanh(z, out=out) if isinstance(act, nn.Tanh) else out.copy_(act(z))


def _take(pool: list, steps: int, batch: int, hidden: int, like: Tensor) -> dict[str, Tensor]:
    """Time-major buffers for one forward + backward, from the pool when one of this shape is there."""
    key = (steps, batch, hidden, like.dtype, like.device)
    for k, ws in enumerate(pool):
        if ws["key"] == key:
            return pool.pop(k)
    wide, narrow = (steps, batch, 4 * hidden), (steps, batch, hidden)
    ws = {name: like.new_empty(wide) for name in ("pre", "gates", "scale", "d_pre")}
    ws.update({name: like.new_empty(narrow) for name in ("cells", "act_cells", "c_gain", "h_prev")})
    return {**ws, "key": key}


def _give_back(pool: list, ws: dict[str, Tensor]) -> None:
    """Back to the pool, once (a retained graph's second backward gives it back again), while small: a CPU
    page-faults a fresh buffer in on every step, a GPU's caching allocator does not, and a large buffer's
    faults are small beside its arithmetic, while holding it between steps would cost its memory."""
    small = sum(v.numel() * v.element_size() for v in ws.values() if isinstance(v, Tensor)) <= POOL_MAX_BYTES
    if small and ws["pre"].device.type == "cpu" and not any(w is ws for w in pool):
        pool.append(ws)


class _Backward(torch.autograd.Function):
    """Forward: stacks the hidden-state leaves (B, T, H). Backward: BPTT by hand into x, the parameters and each
    h_t leaf."""

    @staticmethod
    def forward(ctx, x, w_ih, w_hh, b_ih, b_hh, saved: tuple, *hs: Tensor) -> Tensor:
        ctx.saved = saved
        ctx.save_for_backward(x, w_ih, w_hh, *hs)
        return torch.stack(hs, dim=1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):  # grad_out (B, T, H)
        x, w_ih, w_hh, *hs = ctx.saved_tensors
        ws, owner, act, pool = ctx.saved
        if ws["owner"] is not owner:
            raise RuntimeError("unrolled LSTM: a second backward through a graph whose buffers a later forward "
                               "reused (retain_graph across forwards); run the backward before the next forward")
        scale, f_gate, c_gain = _step_factors(ws, act)
        steps, batch, gates4 = scale.shape
        d_pre = ws["d_pre"]  # dL/d(pre-activation gates) (T, B, 4H)
        d_pre4, scale4 = d_pre.view(steps, batch, 4, -1), scale.view(steps, batch, 4, -1)
        dc, dhs = torch.zeros_like(hs[0]), [None] * steps
        dh = grad_out[:, -1].clone()  # total dL/dh_{T-1}: only from the output
        for t in reversed(range(steps)):
            dhs[t] = dh
            dc = torch.addcmul(dc, dh, c_gain[t])           # dL/dc_t
            torch.mul(torch.stack((dc, dc, dc, dh), dim=1), scale4[t], out=d_pre4[t])  # i, f, g from c; o from h
            if t:  # total dL/dh_{t-1}: from the output and through the recurrence
                dh = torch.addmm(grad_out[:, t - 1], d_pre[t], w_hh)
                dc = dc * f_gate[t]                         # dL/dc_{t-1} through the forget gate
        h_prev = torch.stack(hs[:-1], out=ws["h_prev"][:-1]) if steps > 1 else None  # h_{t-1} for t >= 1
        grads = _parameter_grads(d_pre, x, w_ih, h_prev, ctx.needs_input_grad[0])
        _give_back(pool, ws)
        return (*grads, None, *dhs)


def _parameter_grads(d_pre: Tensor, x: Tensor, w_ih: Tensor, h_prev: Optional[Tensor], need_x: bool) -> tuple:
    """dL/dx (B, T, F), dL/dW_ih, dL/dW_hh, dL/db_ih = dL/db_hh from dL/d(pre gates) (T, B, 4H), each in
    one product over all steps."""
    steps, batch, gates4 = d_pre.shape
    # operands laid out so BLAS takes its fast path for these skinny shapes (F is often 1 or 2): 2-10x here
    flat = d_pre.flatten(0, 1)  # (T*B, 4H), rows in (t, b) order
    d_x = flat.mm(w_ih.t().contiguous().t()).view(steps, batch, -1).transpose(0, 1) if need_x else None
    if h_prev is None:  # one step: h_{-1} = 0
        d_w_hh = d_pre.new_zeros(gates4, gates4 // 4)
    else:
        d_w_hh = h_prev.flatten(0, 1).t().mm(d_pre[1:].flatten(0, 1)).t()
    d_w_ih = x.transpose(0, 1).flatten(0, 1).t().mm(flat).t()
    d_b = flat.sum(dim=0)
    return d_x, d_w_ih, d_w_hh, d_b, d_b.clone()


def _step_factors(ws: dict[str, Tensor], act: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
    """The backward's per-step factors for all steps at once, in the pooled buffers: dL/d(pre gates) =
    [dc, dc, dc, dh] * scale; dL/dc_t gains dh * c_gain; dL/dc_{t-1} = dL/dc_t * f. scale (T, B, 4H), the
    others (T, B, H)."""
    gates, cells, act_cells, scale, c_gain = ws["gates"], ws["cells"], ws["act_cells"], ws["scale"], ws["c_gain"]
    hidden = cells.shape[-1]
    i, f, g, o = gates.chunk(4, dim=-1)
    s_i, s_f, s_g, s_o = scale.chunk(4, dim=-1)
    torch.addcmul(gates, gates, gates, value=-1, out=scale)  # sigmoid' = y - y^2 from the output, for i, f, o
    _derivative(act, ws["pre"][..., 2 * hidden:3 * hidden], g, out=s_g)
    s_i.mul_(g)
    s_f[1:].mul_(cells[:-1])
    s_f[0].zero_()  # c_{-1} = 0
    s_g.mul_(i)
    s_o.mul_(act_cells)
    _derivative(act, cells, act_cells, out=c_gain).mul_(o)
    return scale, f, c_gain


def _derivative(act: nn.Module, z: Tensor, y: Tensor, out: Tensor) -> Tensor:
    """act'(z) into `out` for an element-wise activation with y = act(z): tanh (the default) from its output
    in place, any other through autograd, all steps at once."""
    if isinstance(act, nn.Tanh):
        return torch.addcmul(y.new_ones(()), y, y, value=-1, out=out)  # 1 - y^2
    with torch.enable_grad():
        z = z.detach().requires_grad_()
        value = act(z)
        return out.copy_(torch.autograd.grad(value, z, torch.ones_like(value))[0])
