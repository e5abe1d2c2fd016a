"""What the instruments see of a watched layer's output, against float64 statistics of the same tensors: an output an
in-place operation rewrites after the layer, a layer that returns a tuple, and a copy of the model made while the
hooks are attached (all found by a researcher bringing their own models)."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradexp
from tests.conftest import Capture


def _stats(t: torch.Tensor) -> tuple[float, float]:
    t = t.detach().double()
    return t.mean().item(), t.std(correction=0).item()


class Toggled(nn.Module):
    """ReLU, in place on the steps the test says (an in-place operation that only some steps run)."""

    def __init__(self):
        super().__init__()
        self.inplace = True

    def forward(self, x):
        return F.relu(x, inplace=self.inplace)


def _inplace_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), Toggled(), nn.Linear(16, 16), nn.ReLU(inplace=True), nn.Linear(16, 3))


def test_an_output_rewritten_in_place_after_the_layer_is_measured_as_the_layer_gave_it(tmp_path):
    model, capture = _inplace_net(), Capture()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = gradexp.Monitor(model, run_dir=str(tmp_path / "run"), every=1, optimizers=[opt], sinks=[capture],
                              watch=["0", "2"])
    truth = {}
    copies = {name: [] for name in ("0", "2")}
    for name in copies:  # the test's own copies, taken before anything after the layer runs
        model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: copies[name].append(o.clone()))
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    # step 0 copies everything; step 1 copies the layers seen rewritten; layer 0's ReLU stops being in place at
    # step 2 and starts again at step 3, where layer 0 is copied already
    for step, inplace in enumerate([True, True, False, True]):
        model[1].inplace = inplace
        with monitor.step():
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
        truth[step] = {name: _stats(calls[-1]) for name, calls in copies.items()}
    monitor.close()
    for step, expected in truth.items():
        for name, (mean, std) in expected.items():
            assert capture.steps[step][f"act_mean/{name}"] == pytest.approx(mean, rel=1e-5, abs=1e-7), (step, name)
            assert capture.steps[step][f"act_std/{name}"] == pytest.approx(std, rel=1e-5), (step, name)


def test_an_in_place_rewrite_only_some_steps_run_logs_nothing_rather_than_a_wrong_number(tmp_path):
    model, capture = _inplace_net(), Capture()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = gradexp.Monitor(model, run_dir=str(tmp_path / "run"), every=1, optimizers=[opt], sinks=[capture],
                              watch=["0"])
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    for inplace in (False, True, True):  # not in place at step 0: layer 0 is not copied at step 1
        model[1].inplace = inplace
        with monitor.step():
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
    monitor.close()
    assert "act_mean/0" in capture.steps[0] and "act_grad_norm/0" in capture.steps[1]
    assert "act_mean/0" not in capture.steps[1] and "act_std/0" not in capture.steps[1]
    assert "act_mean/0" in capture.steps[2]  # copied from then on


class TupleBlock(nn.Module):
    """A block returning (x, aux_loss), as mixture-of-experts blocks do."""

    def __init__(self, width=8):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, 2, batch_first=True)  # returns (output, weights)
        self.ff = nn.Linear(width, width)

    def forward(self, x):
        h = x + self.attn(x, x, x)[0]
        return h + torch.tanh(self.ff(h)), h.pow(2).mean()


class TupleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([TupleBlock() for _ in range(3)])
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        aux = 0.0
        for block in self.blocks:
            x, extra = block(x)
            aux = aux + extra
        return self.head(x.mean(dim=1)), aux


@pytest.mark.parametrize("watch", [(), ("blocks.*.attn",)])
def test_a_layer_that_returns_a_tuple_is_measured_on_its_first_tensor(tmp_path, watch):
    torch.manual_seed(0)
    model, capture = TupleNet(), Capture()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = gradexp.Monitor(model, run_dir=str(tmp_path / "run"), every=1, optimizers=[opt], sinks=[capture],
                              watch=list(watch))
    names = [name for name, _ in monitor.layers]
    seen = {}
    for name in names:
        def keep(m, i, out, name=name):
            out[0].retain_grad()
            seen[name] = out[0]
        model.get_submodule(name).register_forward_hook(keep)
    x, y = torch.randn(4, 5, 8), torch.randint(0, 3, (4,))
    with monitor.step():
        logits, aux = model(x)
        (F.cross_entropy(logits, y) + 0.1 * aux).backward()
        opt.step()
    monitor.close()
    logged = capture.steps[0]
    for name, out in seen.items():
        mean, std = _stats(out)
        assert logged[f"act_mean/{name}"] == pytest.approx(mean, rel=1e-5, abs=1e-7)
        assert logged[f"act_std/{name}"] == pytest.approx(std, rel=1e-5)
        assert logged[f"act_grad_norm/{name}"] == pytest.approx(out.grad.double().norm().item(), rel=1e-5)


def test_a_tuple_output_is_binned_in_the_histograms_of_gradexp_run_s_probes(tmp_path):
    """The histogram probe took `output.detach()` of a tuple: an AttributeError inside the user's forward."""
    from gradexp.probes.histograms import Histograms

    torch.manual_seed(0)
    model = TupleNet()
    probe = Histograms([(f"blocks.{i}", block) for i, block in enumerate(model.blocks)])
    with probe.watch(model):
        logits, _ = model(torch.randn(2, 5, 8))
    logits.sum().backward()
    assert sorted(probe.outputs) == ["blocks.0", "blocks.1", "blocks.2"]


def test_a_copy_of_the_model_made_at_a_logging_step_is_not_measured_with_it(tmp_path):
    """An EMA teacher deep-copied inside step 0 inherited the hooks in the tables at that moment; its forwards were
    pooled into the student's statistics at every later logging step."""
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))
    opt, capture = torch.optim.SGD(student.parameters(), lr=0.1), Capture()
    monitor = gradexp.Monitor(student, run_dir=str(tmp_path / "run"), every=1, optimizers=[opt], sinks=[capture],
                              watch=["1", "3"])
    outputs = {}
    for name in ("1", "3"):
        student.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o))
    teacher = None
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    for step in range(3):
        with monitor.step():
            if teacher is None:
                teacher = copy.deepcopy(student)  # made while the logging step's hooks are attached
            with torch.no_grad():
                target = teacher(x + 1.0).softmax(dim=1)
            logits = student(x)
            loss = F.cross_entropy(logits, y) + F.kl_div(logits.log_softmax(1), target, reduction="batchmean")
            loss.backward()
            opt.step()
            opt.zero_grad()
        for name, out in outputs.items():
            mean, std = _stats(out)
            assert capture.steps[step][f"act_mean/{name}"] == pytest.approx(mean, rel=1e-5, abs=1e-7), (step, name)
            assert capture.steps[step][f"act_std/{name}"] == pytest.approx(std, rel=1e-5), (step, name)
    monitor.close()
    assert math.isfinite(capture.steps[2]["act_grad_norm/1"])
    left = [hook for m in teacher.modules() for hook in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())]
    assert not [hook for hook in left if "only_on" in hook.__qualname__]  # gone at their first call (the test's stay)


def test_a_forward_under_inference_mode_inside_a_logging_step_is_measured_like_any_call(tmp_path):
    """A review found the version check raising on it: inference tensors track no version."""
    model, capture = _inplace_net(), Capture()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = gradexp.Monitor(model, run_dir=str(tmp_path / "run"), every=1, optimizers=[opt], sinks=[capture],
                              watch=["0", "2"])
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    for _ in range(2):
        with monitor.step():
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            with torch.inference_mode():
                model(x)  # an accuracy pass inside the step: a second call, pooled with the first (README)
    assert monitor.close().status == "completed"
    assert all(math.isfinite(capture.steps[step]["act_std/0"]) for step in (0, 1))
