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
