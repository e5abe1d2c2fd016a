"""The probes' working buffers (gradexp/probes/scratch.py): reused from one logging step to the next, grown only when
a step needs more, one per (name, dtype, device), and the views the probes compute in lie side by side in them."""
from __future__ import annotations

import weakref

import torch

from gradexp.probes.scratch import Scratch
from gradexp.probes.update_ratio import UpdateRatio

CPU = torch.device("cpu")


def test_a_buffer_is_reused_and_grown_only_when_too_small():
    scratch = Scratch()
    first = scratch.flat(100, torch.float32, CPU)
    assert scratch.flat(60, torch.float32, CPU).data_ptr() == first.data_ptr()  # smaller: the same memory
    assert scratch.flat(60, torch.float32, CPU).numel() == 60
    grown = scratch.flat(200, torch.float32, CPU)
    assert grown.numel() == 200 and scratch.flat(100, torch.float32, CPU).data_ptr() == grown.data_ptr()


def test_names_and_dtypes_have_buffers_of_their_own():
    scratch = Scratch()
    a = scratch.flat(10, torch.float32, CPU, "a")
    assert scratch.flat(10, torch.float32, CPU, "b").data_ptr() != a.data_ptr()
    assert scratch.flat(10, torch.float64, CPU, "a").dtype == torch.float64
    assert scratch.flat(10, torch.float32, CPU, "a").data_ptr() == a.data_ptr()


def test_views_are_shaped_like_their_tensors_and_side_by_side():
    scratch = Scratch()
    like = [torch.zeros(2, 3), torch.zeros(4), torch.zeros(1, 1, 5)]
    views = scratch.views(like, torch.float64, CPU)
    assert [v.shape for v in views] == [t.shape for t in like] and all(v.dtype == torch.float64 for v in views)
    for view, value in zip(views, (1.0, 2.0, 3.0)):
        view.fill_(value)
    assert scratch.flat(15, torch.float64, CPU).tolist() == [1.0] * 6 + [2.0] * 4 + [3.0] * 5


def test_update_ratio_copies_theta_into_the_same_memory_every_logging_step():
    model = torch.nn.Linear(3, 2)
    probe = UpdateRatio()
    pointers = []
    for _ in range(2):
        model(torch.randn(4, 3)).sum().backward()
        probe.after_clip(model, None)
        pointers.append([v.data_ptr() for v in probe.before])
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
        (ratios,) = probe.after_step(model).values()
        want = [0.1 * p.grad.norm() / (p + 0.1 * p.grad).norm() for p in model.parameters()]
        assert torch.allclose(ratios, torch.stack(want).double(), rtol=1e-6)
    assert pointers[0] == pointers[1]


def test_update_ratio_follows_a_model_cast_between_logging_steps():
    """model.double() keeps each Parameter object but gives it new float64 data: the ratio must be read from that, and
    the float32 copy of theta let go."""
    model = torch.nn.Linear(3, 2)
    probe = UpdateRatio()
    copies = []  # the probe's copy of theta at each dtype, by weak reference
    for dtype in (torch.float32, torch.float64):
        model.to(dtype)
        model(torch.randn(4, 3, dtype=dtype)).sum().backward()
        probe.after_clip(model, None)
        copies.append(weakref.ref(probe.before[0]))
        before = [p.detach().clone() for p in model.parameters()]
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + 1e-9)  # an update float32 cannot hold
        (ratios,) = probe.after_step(model).values()
        want = torch.stack([(p.detach() - b).norm() / b.norm() for p, b in zip(model.parameters(), before)]).double()
        assert torch.allclose(ratios, want, rtol=1e-6) and (dtype == torch.float32 or (ratios > 0).all())
        model.zero_grad(set_to_none=True)
    assert copies[0]() is None and copies[1]().dtype == torch.float64  # the float32 copy is gone, the float64 one kept


def _ratios_against_snapshots(model: torch.nn.Module, step: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe's update ratios for one plain SGD step of `step` x grad, and the float64 oracle's."""
    probe = UpdateRatio()
    probe.after_clip(model, None)
    before = [p.detach().double().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p -= step * p.grad
    (ratios,) = probe.after_step(model).values()
    want = [(p.detach().double() - b).norm() / b.norm() for p, b in zip(model.parameters(), before)]
    return ratios, torch.stack(want)


def test_update_ratio_of_parameters_that_differ_in_dtype_or_layout():
    """One flat copy needs parameters of one dtype, each contiguous: a half-cast model and a channels_last convolution
    take the per-parameter copies, with the same numbers."""
    mixed = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2).double())
    mixed[1](mixed[0](torch.randn(5, 3)).double()).sum().backward()
    conv = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    conv(torch.randn(2, 3, 5, 5)).sum().backward()
    for model in (mixed, conv):
        ratios, want = _ratios_against_snapshots(model, 0.1)
        assert torch.allclose(ratios, want, rtol=1e-6)


def test_update_ratio_of_tiny_steps_and_weights_is_exact():
    """Weights of 1e-30 moved by 1e-33: float32 squares of either underflow to 0, the ratio must still be 1e-3 (to
    float32's rounding of the moved weights, ~1e-4 of the step)."""
    model = torch.nn.Linear(8, 8)
    with torch.no_grad():
        model.weight.fill_(1e-30)
        model.bias.fill_(1e-30)
    model(torch.randn(3, 8)).sum().backward()
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e-32)
    ratios, want = _ratios_against_snapshots(model, 0.1)
    assert torch.allclose(ratios, want, rtol=1e-6) and torch.allclose(ratios, torch.full_like(ratios, 1e-3), rtol=1e-3)


def test_update_ratio_of_a_bfloat16_parameter_is_its_exact_step():
    """1 + 2^-7 moved by -257 in bfloat16 (to -255): the step, -256.0078125, is exact in float32 but rounds to -256 in
    bfloat16."""
    model = torch.nn.Linear(1, 1, bias=False).bfloat16()
    with torch.no_grad():
        model.weight.fill_(1.0078125)
    model.weight.grad = torch.ones_like(model.weight)
    probe = UpdateRatio()
    probe.after_clip(model, None)
    with torch.no_grad():
        model.weight.sub_(257.0)
    (ratio,) = probe.after_step(model).values()
    after = model.weight.item()
    assert after == -255.0 and ratio.item() == (1.0078125 - after) / 1.0078125  # float64 arithmetic on exact values
    assert (torch.tensor(after, dtype=torch.bfloat16) - torch.tensor(1.0078125, dtype=torch.bfloat16)).item() == -256
