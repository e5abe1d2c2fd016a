"""The Lightning callback (gradexp.integrations.lightning): every logged value of an update against plain torch in
float64, with Lightning's gradient accumulation and its own clipping (norm and value); AMP-skipped steps; an exception
in training_step; the example. Skipped where the extra is not installed (`pip install 'gradexp[lightning]'`)."""
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pl = pytest.importorskip("lightning.pytorch", reason="the lightning extra is not installed (pip install 'gradexp[lightning]')")

import gradexp  # noqa: E402
from gradexp.config.schema import ConfigError  # noqa: E402
from gradexp.integrations.lightning import GradexpCallback  # noqa: E402
from lightning.pytorch.plugins import MixedPrecision  # noqa: E402
from tests.conftest import Capture, activation_expectations, float64_step, run_example_twice  # noqa: E402

# Lightning's notices about this machine (srun on PATH) and its own deprecated torch calls: not ours to act on
pytestmark = pytest.mark.filterwarnings("ignore:The `srun` command", "ignore:.*LeafSpec")
EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "lightning_callback.py")
ACCUMULATE, BATCH, LR = 2, 4, 0.1


class Net(pl.LightningModule):
    """An MLP gradexp does not know: three tanh blocks in a ModuleList (discovered: blocks.0 .. blocks.2)."""

    def __init__(self, fail_at: int = -1, poison_at: int = -1):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Linear(5, 6)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(6, 6), nn.Tanh()) for _ in range(3)])
        self.head = nn.Linear(6, 3)
        self.fail_at, self.poison_at = fail_at, poison_at

    def forward(self, x):
        h = torch.tanh(self.stem(x))
        for block in self.blocks:
            h = block(h)
        return self.head(h)

    def training_step(self, batch, batch_idx):
        if batch_idx == self.fail_at:
            raise RuntimeError("user bug")
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        return loss * math.inf if batch_idx // ACCUMULATE == self.poison_at else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR)


def _batches(n):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(BATCH, 5, generator=g), torch.randint(0, 3, (BATCH,), generator=g)) for _ in range(n)]


def _fit(model, tmp_path, steps=2, capture=None, every=1, **trainer_options):
    callback = GradexpCallback(run_dir=str(tmp_path / "run"), every=every, sinks=[capture] if capture else [])
    trainer = pl.Trainer(callbacks=[callback], max_steps=steps, accumulate_grad_batches=ACCUMULATE, logger=False,
                         accelerator="cpu", devices=1, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path), **trainer_options)
    x, y = (torch.cat(parts) for parts in zip(*_batches(steps * ACCUMULATE)))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH)  # in order
    trainer.fit(model, train_dataloaders=loader)
    return trainer, callback


def _oracle(model, micro, algorithm, clip):
    """Update 0 in float64: gradients of the accumulated (averaged) loss, the clip, activations and the update."""
    ref, outs, losses = float64_step(model, micro)
    total_loss = sum(losses)  # Lightning's per-batch losses, each divided by the accumulation
    grads = {n: p.grad.clone() for n, p in ref.named_parameters()}
    norm = math.sqrt(sum(g.pow(2).sum().item() for g in grads.values()))
    expected = {f"grad_norm/{n}": g.norm().item() for n, g in grads.items()}
    if algorithm == "norm":
        scale = min(1.0, clip / (norm + 1e-6))
        clipped = {n: g * scale for n, g in grads.items()}
        expected.update({"clip/scale": scale, "clip/frac_steps_clipped": 1.0})
    else:
        clipped = {n: g.clamp(-clip, clip) for n, g in grads.items()}
        after = math.sqrt(sum(g.pow(2).sum().item() for g in clipped.values()))
        above = sum((g.abs() > clip).sum().item() for g in grads.values())
        expected.update({"clip/scale": after / norm, "clip/frac_steps_clipped": 1.0,
                         "clip/frac_entries_clipped": above / sum(g.numel() for g in grads.values())})
    expected.update({"grad_norm/total": norm, "loss/train": total_loss, "lr": LR})
    if algorithm == "norm":
        expected["grad_norm/total_clipped"] = norm * scale
    expected.update(activation_expectations(outs))
    params = dict(ref.named_parameters())
    for n, g in clipped.items():  # plain SGD: the update is lr * clipped gradient
        expected[f"update_ratio/{n}"] = (LR * g).norm().item() / params[n].detach().norm().item()
    return expected


@pytest.mark.parametrize("algorithm, clip", [("norm", 0.05), ("value", 0.01)])
def test_every_value_of_an_accumulated_clipped_update_matches_plain_torch(tmp_path, algorithm, clip):
    model, capture = Net(), Capture()
    expected = _oracle(model, _batches(2 * ACCUMULATE)[:ACCUMULATE], algorithm, clip)
    trainer, callback = _fit(model, tmp_path, capture=capture, gradient_clip_val=clip,
                             gradient_clip_algorithm=algorithm)
    assert [n for n, _ in callback.monitor.layers] == ["blocks.0", "blocks.1", "blocks.2"]
    assert sorted(capture.steps) == [0, 1]  # two updates of two micro-batches each
    logged = capture.steps[0]
    assert set(expected) <= set(logged), set(expected) - set(logged)
    for tag, value in expected.items():
        assert logged[tag] == pytest.approx(value, rel=1e-4, abs=1e-9), tag
    assert trainer.gradient_clip_val == clip and trainer.gradient_clip_algorithm == algorithm  # handed back
    summary = gradexp.load_summary(str(tmp_path / "run"))
    assert summary["status"] == "completed" and summary["steps"] == 2 and summary["verdict"]["label"]
    assert [layer["name"] for layer in summary["layers"]] == ["blocks.0", "blocks.1", "blocks.2"]
    assert gradexp.find_runs(str(tmp_path)) == [str(tmp_path / "run")]  # what `gradexp report` reads


def test_an_exception_in_training_step_removes_the_hooks_and_writes_a_whole_failed_summary(tmp_path):
    model, capture = Net(fail_at=ACCUMULATE + 1), Capture()  # fails in the second update's second micro-batch
    with pytest.raises(RuntimeError, match="user bug"):
        _fit(model, tmp_path, capture=capture, gradient_clip_val=1.0)
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert sorted(capture.steps) == [0]  # the failed update logged nothing
    summary = gradexp.load_summary(str(tmp_path / "run"))
    assert summary["status"] == "failed" and summary["steps"] == 1 and "user bug" in summary["error"]
    assert not any("tmp" in f for f in os.listdir(tmp_path / "run"))


def test_an_update_the_amp_scaler_skips_logs_no_update_ratio(tmp_path):
    model, capture = Net(poison_at=1), Capture()
    # Lightning turns precision="16-mixed" into bf16 on CPU; fp16 with a GradScaler is asked for explicitly
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 4)
    _fit(model, tmp_path, steps=3, capture=capture, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    assert capture.steps[0].get("amp/skipped_steps", 0) == 0 and "update_ratio/head.weight" in capture.steps[0]
    assert capture.steps[1]["amp/skipped_steps"] == 1.0 and "update_ratio/head.weight" not in capture.steps[1]
    assert gradexp.load_summary(str(tmp_path / "run"))["perf"]["amp_skipped_steps"] == 1
    plain = Capture()  # the same update without the scaler: the activation gradients must not read 2^4 too large
    _fit(Net(), tmp_path / "plain", steps=1, capture=plain)
    act_grads = [t for t in plain.steps[0] if t.startswith("act_grad_norm/")]
    assert act_grads and all(capture.steps[0][t] == pytest.approx(plain.steps[0][t], rel=1e-2) for t in act_grads)


class FusedNet(Net):
    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3, fused=True)


@pytest.mark.parametrize("net", [Net, FusedNet])
def test_updates_the_amp_scaler_skips_between_logging_steps_are_counted_too(tmp_path, net):
    """It counted the skips that fell on logging steps only: 3 of 9 (found by a researcher); a fused optimizer takes
    the skip inside its kernel, where the post-step hook still fires (a review: its skips counted as updates)."""
    model, capture = net(poison_at=1), Capture()  # update 1 is not a logging step at every=2
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 4)
    _, callback = _fit(model, tmp_path, steps=3, every=2, capture=capture,
                       plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    assert sorted(capture.steps) == [0, 2] and capture.steps[2]["amp/skipped_steps"] == 1.0
    assert gradexp.load_summary(str(tmp_path / "run"))["perf"]["amp_skipped_steps"] == 1
    assert not callback._hooks and all(not opt._optimizer_step_post_hooks for opt in model.trainer.optimizers)


@pytest.mark.slow
def test_the_example_runs_twice_and_leaves_runs_gradexp_report_reads(tmp_path):
    """Run as the README says, twice: a new folder each time (a fixed default folder failed the second run, found
    by a new user's walkthrough)."""
    for summary in run_example_twice(EXAMPLE, tmp_path, steps=8):
        assert summary["status"] == "completed" and summary["steps"] == 8 and summary["verdict"]["label"]


@pytest.mark.parametrize("options", [{"every": 0}, {"probes": "grad_norm"}, {"activation": "ReLU"}])
def test_the_callback_refuses_a_bad_option_when_made(options):
    """Found by an adversarial test: GradexpCallback(every=0) was accepted until the fit started."""
    with pytest.raises(ConfigError):
        GradexpCallback(**options)


class GAN(pl.LightningModule):
    """Alternating updates by hand: D's step, then G's, in one batch (alternate=True); or one backward, then both
    optimizers (a body and a head optimizer, alternate=False)."""

    def __init__(self, alternate=True):
        super().__init__()
        torch.manual_seed(0)
        self.automatic_optimization, self.alternate = False, alternate
        self.G = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 5))
        self.D = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))

    def training_step(self, batch, batch_idx):
        opt_d, opt_g = self.optimizers()
        real, noise = batch[0], torch.randn(len(batch[0]), 4)
        opt_d.zero_grad()
        opt_g.zero_grad()
        if not self.alternate:
            self.manual_backward(F.softplus(-self.D(self.G(noise))).mean() + F.softplus(-self.D(real)).mean())
            opt_d.step()
            opt_g.step()
            return
        self.manual_backward(F.softplus(-self.D(real)).mean() + F.softplus(self.D(self.G(noise).detach())).mean())
        opt_d.step()
        self.manual_backward(F.softplus(-self.D(self.G(noise))).mean())
        opt_g.step()

    def configure_optimizers(self):
        return torch.optim.SGD(self.D.parameters(), lr=0.1), torch.optim.SGD(self.G.parameters(), lr=0.1)


@pytest.mark.parametrize("alternate", [True, False])
def test_manual_optimization_alternating_updates_are_refused_and_one_backward_for_two_optimizers_is_measured(
        tmp_path, alternate):
    """The callback read G's gradients at D's step, before G's backward: missing at step 0, one batch old after, and
    a verdict computed from them, in silence (found by a researcher). Two optimizers on one backward are fine (a
    review: a first fix refused every module with two optimizers)."""
    capture = Capture()
    callback = GradexpCallback(run_dir=str(tmp_path / "run"), every=1, sinks=[capture])
    trainer = pl.Trainer(callbacks=[callback], max_steps=4, logger=False, accelerator="cpu", devices=1,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(tmp_path))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(16, 5)), batch_size=4)
    model = GAN(alternate)
    if alternate:
        with pytest.raises(RuntimeError, match="optimizer 2 of 2 stepped on the gradients of another backward"):
            trainer.fit(model, train_dataloaders=loader)
        assert gradexp.load_summary(str(tmp_path / "run"))["status"] == "failed"
        return
    trainer.fit(model, train_dataloaders=loader)
    logged = capture.steps[0]
    assert {"grad_norm/G.0.weight", "grad_norm/D.0.weight", "update_ratio/G.0.weight"} <= set(logged)
