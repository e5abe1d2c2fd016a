"""gradexp.Monitor on a model gradexp does not know (built here) and the user's own loop: every logged value against
plain torch in float64, the awkward loops (accumulation, weight sharing, frozen and several optimizers, user
clipping, AMP-skipped steps, exceptions), and the cost discipline (no hook outside logging steps)."""
import contextlib
import copy
import json
import math
import os
import re
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradexp
from gradexp.config.schema import ConfigError
from tests.conftest import activation_expectations, float64_step, run_example_twice

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "monitor_loop.py")


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + torch.tanh(self.conv(x))


class SharedResNet(nn.Module):
    """Residual CNN whose middle block runs twice per forward (weight sharing)."""

    def __init__(self, c=3):
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.blocks = nn.ModuleList([Block(c) for _ in range(3)])
        self.head = nn.Linear(c, 4)

    def forward(self, x):
        h = torch.tanh(self.stem(x))
        h = self.blocks[0](h)
        h = self.blocks[1](self.blocks[1](h))
        h = self.blocks[2](h)
        return self.head(h.mean(dim=(2, 3)))


class Capture:
    def __init__(self):
        self.logged = {}

    def log(self, step, values):
        self.logged[step] = values

    def close(self, outcome):
        self.outcome = outcome


def _data(seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 5, 5, generator=g), torch.randint(0, 4, (n,), generator=g)


def _build():
    torch.manual_seed(0)
    model = SharedResNet()
    model.stem.bias.requires_grad_(False)  # frozen
    body = [p for n, p in model.named_parameters() if not n.startswith("head") and p.requires_grad]
    opt_a = torch.optim.SGD(body, lr=0.1)
    opt_b = torch.optim.SGD([{"params": [model.head.weight], "lr": 0.05}, {"params": [model.head.bias], "lr": 0.02}])
    return model, opt_a, opt_b


MAX_NORM = 0.05  # small enough that step 0 is clipped


def _user_step(monitor, model, opts, micro_batches):
    with monitor.step():
        for x, y in micro_batches:  # gradient accumulation
            loss = F.cross_entropy(model(x), y) / len(micro_batches)
            loss.backward()
        monitor.clip_grad_norm_(model.parameters(), MAX_NORM)
        for opt in opts:
            opt.step()
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        monitor.record(loss=loss)


def _oracle(model, micro_batches, lrs):
    """Step 0 in float64 with plain torch: gradients, activation gradients and statistics, clipping, update."""
    ref, outs, losses = float64_step(model, micro_batches)
    grads = {n: p.grad.clone() for n, p in ref.named_parameters() if p.grad is not None}
    total = math.sqrt(sum(g.pow(2).sum().item() for g in grads.values()))
    scale = min(1.0, MAX_NORM / (total + 1e-6))
    expected = {f"grad_norm/{n}": g.norm().item() for n, g in grads.items()}
    expected.update({"grad_norm/total": total, "grad_norm/total_clipped": total * scale, "clip/scale": scale,
                     "clip/frac_steps_clipped": 1.0, "loss/train": losses[-1], "lr": 0.1})
    expected.update(activation_expectations(outs))
    params = dict(ref.named_parameters())
    for n, g in grads.items():  # plain SGD: the update is lr * clipped gradient
        expected[f"update_ratio/{n}"] = (lrs[n] * scale * g).norm().item() / params[n].detach().norm().item()
    return expected


def test_every_value_matches_plain_torch_on_an_unknown_model(tmp_path):
    model, opt_a, opt_b = _build()
    lrs = {n: (0.05 if n == "head.weight" else 0.02 if n == "head.bias" else 0.1) for n, _ in model.named_parameters()}
    micro = [_data(0), _data(1)]
    expected = _oracle(model, micro, lrs)
    capture = Capture()
    monitor = gradexp.Monitor(model, run_dir=str(tmp_path / "run"), every=2, optimizers=[opt_a, opt_b],
                              sinks=[capture])
    assert [n for n, _ in monitor.layers] == ["blocks.0", "blocks.1", "blocks.2"]  # discovered
    _user_step(monitor, model, [opt_a, opt_b], micro)
    logged = capture.logged[0]
    assert "grad_norm/stem.bias" not in logged  # frozen: no gradient, no tag
    assert set(expected) == set(logged)
    for tag, value in expected.items():
        assert logged[tag] == pytest.approx(value, rel=1e-4, abs=1e-9), tag


@pytest.mark.parametrize("optimizer", ["sgd", "lbfgs"])
def test_optimizer_step_with_a_closure_reads_the_closures_gradients(tmp_path, optimizer):
    """optimizer.step(closure) runs the pre-step hooks before the closure's backward: the Monitor reads the gradients
    once the closure has returned (its first evaluation, at the parameters the update starts from)."""
    torch.manual_seed(0)
    model = SharedResNet()
    x, y = _data(0)
    ref = copy.deepcopy(model).double()
    F.cross_entropy(ref(x.double()), y).backward()
    expected = {f"grad_norm/{n}": p.grad.norm().item() for n, p in ref.named_parameters()}
    opt = (torch.optim.SGD(model.parameters(), lr=0.1) if optimizer == "sgd"
           else torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=3))
    capture = Capture()
    monitor = gradexp.Monitor(model, run_dir=str(tmp_path / "run"), every=1, optimizers=[opt], sinks=[capture])

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    with monitor.step():
        opt.step(closure)
    monitor.close()
    logged = capture.logged[0]
    assert logged.get("amp/skipped_steps", 0) == 0  # the update happened
    for tag, value in expected.items():
        assert logged[tag] == pytest.approx(value, rel=1e-4), tag


def test_lbfgs_closure_reruns_never_leak_into_the_next_logging_step(tmp_path):
    """LBFGS evaluates its closure again after the gradients were read, with the hooks still attached: those later
    forwards and backwards are not the step's, nor the next step's (each logging step starts its probes afresh)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    opt = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=3)
    capture = Capture()
    monitor = gradexp.Monitor(model, run_dir=str(tmp_path / "run"), every=1, optimizers=[opt], sinks=[capture],
                              probes=("act_grad_norm", "act_stats"), watch=["0"])
    truth = []
    for _ in range(3):
        first: dict = {}

        def closure():
            opt.zero_grad()
            h = model[0](x)
            h.retain_grad()
            loss = ((model[2](model[1](h)) - y) ** 2).mean()
            loss.backward()
            first.setdefault("grad", h.grad.double().norm().item())
            first.setdefault("mean", h.detach().double().mean().item())
            return loss

        with monitor.step():
            opt.step(closure)
        truth.append(first)
    monitor.close()
    for step, want in enumerate(truth):
        assert capture.logged[step]["act_grad_norm/0"] == pytest.approx(want["grad"], rel=1e-6), step
        assert capture.logged[step]["act_mean/0"] == pytest.approx(want["mean"], rel=1e-6, abs=1e-9), step


def test_steps_between_logging_steps_register_no_hook_and_log_nothing(tmp_path):
    model, opt_a, opt_b = _build()
    capture = Capture()
    monitor = gradexp.Monitor(model, run_dir=str(tmp_path / "run"), every=3, optimizers=[opt_a, opt_b],
                              sinks=[capture], steps=5)
    seen = []
    for step in range(5):
        with monitor.step():
            seen.append((len(model.blocks[0]._forward_hooks), len(opt_a._optimizer_step_pre_hooks)))
            F.cross_entropy(model(_data(step)[0]), _data(step)[1]).backward()
            opt_a.step(), opt_b.step()
    assert seen[1] == seen[2] == (0, 0) and seen[0][0] > 0 and seen[0][1] == 1
    assert sorted(capture.logged) == [0, 3, 4]  # every 3rd, and the last planned step
    model.eval()  # train/eval switching outside the steps records nothing
    model(_data(9)[0])
    assert sorted(capture.logged) == [0, 3, 4]


def test_an_exception_inside_a_step_removes_the_hooks_and_writes_a_whole_failed_summary(tmp_path):
    model, opt_a, opt_b = _build()
    capture = Capture()
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="user bug"):
        with gradexp.Monitor(model, run_dir=str(run_dir), every=1, optimizers=[opt_a], sinks=[capture]) as monitor:
            _user_step(monitor, model, [opt_a, opt_b], [_data(0)])
            with monitor.step():
                F.cross_entropy(model(_data(1)[0]), _data(1)[1]).backward()
                raise RuntimeError("user bug")
    assert all(not m._forward_hooks for m in model.modules()) and not opt_a._optimizer_step_pre_hooks
    assert sorted(capture.logged) == [0]  # the failed step logged nothing
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["steps"] == 1 and "user bug" in summary["error"]
    assert sorted(os.listdir(run_dir))[-1] == "summary.json" and not any("tmp" in f for f in os.listdir(run_dir))


@pytest.mark.parametrize("misuse, says", [
    (lambda monitor: monitor.step().__enter__(), r"step\(\) inside another .*not nested"),
    (lambda monitor: monitor.close(), r"close\(\) inside .*after the step has ended"),
])
@pytest.mark.parametrize("logging", [True, False])
def test_a_nested_step_or_a_close_inside_a_step_is_refused_and_the_run_fails_whole(tmp_path, misuse, says, logging):
    """Left from the seventh session's note: a step() inside another was blamed on record() ('belongs inside
    step'), and a close() inside a step wrote a summary without that step, whose values were then lost."""
    model, opt_a, opt_b = _build()
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match=says):
        with gradexp.Monitor(model, run_dir=str(run_dir), every=1 if logging else 5, optimizers=[opt_a]) as monitor:
            _user_step(monitor, model, [opt_a, opt_b], [_data(0)])
            with monitor.step():
                misuse(monitor)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["steps"]) == ("failed", 1) and re.search(says, summary["error"])
    assert all(not m._forward_hooks for m in model.modules()) and not opt_a._optimizer_step_pre_hooks


def test_lr_is_the_rate_the_update_used_with_the_scheduler_stepped_inside_the_step(tmp_path):
    """Found by a user: lr was read when the `with` ended, after a scheduler stepped inside it, one update ahead."""
    model, opt_a, opt_b = _build()
    schedule = torch.optim.lr_scheduler.StepLR(opt_a, step_size=1, gamma=0.5)
    capture = Capture()
    monitor = gradexp.Monitor(model, run_dir=str(tmp_path / "run"), every=1, optimizers=[opt_a, opt_b],
                              sinks=[capture])
    for step in range(3):
        with monitor.step():
            F.cross_entropy(model(_data(step)[0]), _data(step)[1]).backward()
            opt_a.step(), opt_b.step(), schedule.step()
            opt_a.zero_grad(), opt_b.zero_grad()
    monitor.close()
    assert [capture.logged[step]["lr"] for step in range(3)] == [0.1, 0.05, 0.025]


@pytest.mark.parametrize("code, status", [(3, "failed"), ("bad config", "failed"), (0, "completed"),
                                          (None, "completed")])
def test_sys_exit_inside_the_with_block_ends_the_run_by_its_code(tmp_path, code, status):
    """Found by an adversarial test: sys.exit(3) inside `with Monitor(...)` left a summary with status completed."""
    model, opt_a, opt_b = _build()
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit):
        with gradexp.Monitor(model, run_dir=str(run_dir), every=1, optimizers=[opt_a]) as monitor:
            _user_step(monitor, model, [opt_a, opt_b], [_data(0)])
            sys.exit(code)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["steps"]) == (status, 1)
    assert (summary.get("error") is None) == (status == "completed")


def _gan():
    torch.manual_seed(0)

    def net(inputs, outputs):
        return nn.Sequential(nn.Linear(inputs, 16), *[nn.Sequential(nn.Linear(16, 16), nn.Tanh()) for _ in range(3)],
                             nn.Linear(16, outputs))

    g, d = net(4, 2), net(2, 1)
    return g, d, torch.optim.SGD(g.parameters(), lr=0.1), torch.optim.SGD(d.parameters(), lr=0.1)


def _gan_step(g, d, opt_g, opt_d, step, seen, step_d=contextlib.nullcontext, step_g=contextlib.nullcontext,
              whole=contextlib.nullcontext):
    """A GAN's alternating updates: D on real and fake, then G through D. `seen` gets each network's gradient norms
    (float64) as its optimizer is about to step."""
    gen = torch.Generator().manual_seed(step)
    real, z = torch.randn(8, 2, generator=gen) + 2, torch.randn(8, 4, generator=gen)
    bce = F.binary_cross_entropy_with_logits
    with whole():
        with step_d():
            fake = g(z)
            (bce(d(real), torch.ones(8, 1)) + bce(d(fake.detach()), torch.zeros(8, 1))).backward()
            seen.update({f"grad_norm/{n}": p.grad.double().norm().item() for n, p in d.named_parameters()})
            opt_d.step()
            opt_d.zero_grad(), opt_g.zero_grad()
        with step_g():
            bce(d(fake), torch.ones(8, 1)).backward()
            seen.update({f"grad_norm/{n}": p.grad.double().norm().item() for n, p in g.named_parameters()})
            opt_g.step()
            opt_g.zero_grad(), opt_d.zero_grad()


def test_alternating_updates_are_one_monitor_per_network_and_one_monitor_for_both_is_refused(tmp_path):
    """Found by a user: with optimizers=[opt_d, opt_g] around a GAN's two updates, everything after D's step was
    dropped: no G gradient norms or update ratios, a D-only total, and a verdict from D alone, all silently. One Monitor
    per network measures each update; one Monitor for both refuses in one line at its first logging step."""
    g, d, opt_g, opt_d = _gan()
    capture_d, capture_g, seen = Capture(), Capture(), {}
    mon_d = gradexp.Monitor(d, run_dir=str(tmp_path / "d"), every=1, optimizers=[opt_d], sinks=[capture_d])
    mon_g = gradexp.Monitor(g, run_dir=str(tmp_path / "g"), every=1, optimizers=[opt_g], sinks=[capture_g])
    for step in range(2):
        seen.clear()
        _gan_step(g, d, opt_g, opt_d, step, seen, step_d=mon_d.step, step_g=mon_g.step)
        logged = {**capture_d.logged[step], **capture_g.logged[step]}
        for tag, value in seen.items():
            assert logged[tag] == pytest.approx(value, rel=1e-6), (step, tag)
        assert all(f"update_ratio/{n}" in capture_g.logged[step] for n, _ in g.named_parameters())
    assert mon_d.close().status == mon_g.close().status == "completed"

    g, d, opt_g, opt_d = _gan()
    run_dir = tmp_path / "both"
    with pytest.raises(RuntimeError, match=r"optimizer 2 of 2 stepped on the gradients of another backward .*"
                                           r"one Monitor per network"):
        with gradexp.Monitor(nn.ModuleDict({"g": g, "d": d}), run_dir=str(run_dir), every=1,
                             optimizers=[opt_d, opt_g]) as both:
            _gan_step(g, d, opt_g, opt_d, 0, {}, whole=both.step)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("between", ["nothing", "clip", "unscale and clip", "closure"])
def test_several_optimizers_after_one_backward_need_nothing_more(tmp_path, between):
    """The supported case beside the refused one: every optimizer steps on the gradients of the step's backward(s),
    each clipped (in place) or stepped with a closure as the loop likes (a review found these refused as 'another
    backward' while a version counter was the test)."""
    model, opt_a, opt_b = _build()
    capture = Capture()
    scaler = torch.amp.GradScaler("cpu", enabled=between == "unscale and clip")
    monitor = gradexp.Monitor(model, run_dir=str(tmp_path / "run"), every=1, optimizers=[opt_a, opt_b],
                              sinks=[capture], scaler=scaler if scaler.is_enabled() else None)
    with monitor.step():
        x, y = _data(0)
        loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        for opt in (opt_a, opt_b):
            if between == "unscale and clip":
                scaler.unscale_(opt)
            if between != "nothing":
                torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
            if between == "closure":
                opt.step(lambda: loss)
            else:
                scaler.step(opt)
        scaler.update()
    assert monitor.close().status == "completed"
    assert all(f"update_ratio/{n}" in capture.logged[0] for n, p in model.named_parameters() if p.requires_grad)


def test_close_interrupted_inside_a_step_drops_that_step_and_ends_the_run(tmp_path):
    """A preemption handler (SIGTERM, SIGUSR1) calls close(interrupted=True) in the middle of a step (a review): the
    open step is dropped, the summary says interrupted after the steps done, and the `with` ends quietly."""
    model, opt_a, opt_b = _build()
    run_dir = tmp_path / "run"
    monitor = gradexp.Monitor(model, run_dir=str(run_dir), every=1, optimizers=[opt_a])
    _user_step(monitor, model, [opt_a, opt_b], [_data(0)])
    with monitor.step():
        F.cross_entropy(model(_data(1)[0]), _data(1)[1]).backward()
        assert monitor.close(interrupted=True).status == "interrupted"
        opt_a.step()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["steps"]) == ("interrupted", 1)
    assert all(not m._forward_hooks for m in model.modules()) and not opt_a._optimizer_step_pre_hooks


def test_a_ctrl_c_inside_the_with_block_is_an_interrupted_run(tmp_path):
    """KeyboardInterrupt is no Exception: it was recorded as 'completed'. The run was stopped: 'interrupted'."""
    model, opt_a, opt_b = _build()
    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        with gradexp.Monitor(model, run_dir=str(run_dir), every=1, optimizers=[opt_a], sinks=[Capture()]) as monitor:
            _user_step(monitor, model, [opt_a, opt_b], [_data(0)])
            raise KeyboardInterrupt
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["steps"]) == ("interrupted", 1)


def test_a_loop_whose_loss_goes_nan_ends_diverged_with_where(tmp_path):
    """lr=1e30: the loss is NaN within a few steps. The Monitor cannot stop the user's loop, but the run is no
    'completed' one labelled vanishing: diverged, with the first logged step where the loss or gradient went bad."""
    model, _, _ = _build()
    opt = torch.optim.SGD(model.parameters(), lr=1e38)  # no clipping: the first update overflows the weights
    run_dir = tmp_path / "run"
    with gradexp.Monitor(model, run_dir=str(run_dir), every=1, optimizers=[opt], sinks=[Capture()]) as monitor:
        for step in range(4):
            with monitor.step():
                x, y = _data(step)
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                monitor.record(loss=loss)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["verdict"]["label"] == "diverged"
    assert summary["nonfinite"]["tensor"] in ("loss/train", "grad_norm/total") and summary["nonfinite"]["step"] >= 1


def _scaled_step(monitor, model, opt, scaler, step, poison):
    """One update of the README's AMP recipe; a poisoned loss (inf) makes the scaler skip it."""
    with monitor.step():
        x, y = _data(step)
        loss = F.cross_entropy(model(x), y) * (math.inf if poison else 1.0)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        monitor.gradients_ready()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)


def test_a_step_the_amp_scaler_skips_logs_no_update(tmp_path):
    model, opt_a, _ = _build()
    capture = Capture()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 4)
    monitor = gradexp.Monitor(model, run_dir=str(tmp_path / "run"), every=1, optimizers=[opt_a], sinks=[capture])
    for step, poison in enumerate([False, True]):
        _scaled_step(monitor, model, opt_a, scaler, step, poison)
    assert capture.logged[0].get("amp/skipped_steps", 0) == 0 and any(t.startswith("update_ratio/") for t in capture.logged[0])
    assert capture.logged[1]["amp/skipped_steps"] == 1.0  # a count, as gradexp run logs it (it was a 1 flag)
    assert not any(t.startswith("update_ratio/") for t in capture.logged[1])
    assert monitor.close().perf["amp_skipped_steps"] == 1
    assert gradexp.load_summary(str(tmp_path / "run"))["amp"]["skipped_steps"] == 1  # read "skipped_step": 1.0


def test_steps_an_fp16_scaler_skips_at_the_start_give_no_first_values_and_the_verdict_says_where_first_is(tmp_path):
    """A scale of 2^30 overflows fp16 activation gradients until the scaler has halved it enough: those logged steps'
    norms are inf. summary.json's first values (and the at-initialisation verdict) come from the first logged step
    the scaler kept, not from inf ("no finite norms")."""
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Sequential(nn.Linear(32, 32), nn.Tanh()) for _ in range(4)], nn.Linear(32, 4))
    opt, capture = torch.optim.SGD(model.parameters(), lr=0.1), Capture()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 30)
    monitor = gradexp.Monitor(model, run_dir=str(tmp_path / "run"), every=5, optimizers=[opt], scaler=scaler,
                              sinks=[capture])
    x, y = torch.randn(64, 32), torch.randint(0, 4, (64,))
    for _ in range(30):
        with monitor.step():
            with torch.autocast("cpu", dtype=torch.float16):
                loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
    monitor.close()
    summary = gradexp.load_summary(str(tmp_path / "run"))
    tag = lambda layer: f"act_grad_norm/{layer}"  # noqa: E731
    overflowed = [step for step, values in sorted(capture.logged.items())
                  if not all(math.isfinite(values[tag(layer["name"])]) for layer in summary["layers"])]
    assert overflowed and overflowed[0] == 0  # the case: step 0 (and maybe more) overflowed at the scale
    kept = min(step for step in capture.logged if step not in overflowed)
    assert summary["first_step"] == kept
    for layer in summary["layers"]:
        assert layer["act_grad_norm"]["first"] == capture.logged[kept][tag(layer["name"])]
    verdict = summary["verdict"]
    assert verdict["at_init"]["gain"] is not None and "no finite norms" not in verdict["evidence"]
    assert f"At step {kept}, the first logged step whose norms are finite (the loss scaler skipped step 0):" in verdict["evidence"]


@pytest.mark.parametrize("handed_over", [True, False])
def test_steps_the_scaler_skips_between_logging_steps_are_counted_too(tmp_path, handed_over):
    """amp/skipped_steps counted the skips that fell on logging steps only: 3 of 8 (found by a researcher)."""
    model, opt_a, _ = _build()
    capture = Capture()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 4)
    monitor = gradexp.Monitor(model, run_dir=str(tmp_path / "run"), every=4, optimizers=[opt_a], sinks=[capture],
                              steps=9, scaler=scaler if handed_over else None)
    poisoned = {1, 2, 5, 8}  # 8 is the last step, which logs; 1, 2 and 5 do not
    for step in range(9):
        _scaled_step(monitor, model, opt_a, scaler, step, step in poisoned)
    assert sorted(capture.logged) == [0, 4, 8]
    assert capture.logged[4]["amp/skipped_steps"] == 2.0 and capture.logged[8]["amp/skipped_steps"] == 4.0
    assert monitor.close().perf["amp_skipped_steps"] == 4
    assert gradexp.load_summary(str(tmp_path / "run"))["amp"]["skipped_steps"] == 4
    assert not opt_a._optimizer_step_post_hooks  # the counting hooks go with the Monitor


@pytest.mark.parametrize("optimizers", [1, 2])
def test_a_fused_optimizer_s_skipped_steps_are_skips_not_updates_or_a_divergence(tmp_path, optimizers):
    """A fused optimizer takes the scaler's skip inside its kernel: GradScaler calls its step() either way, so the
    post-step hook fired and a skipped logging step logged an update and ended the run "diverged" (a review); two
    fused optimizers (body and head) counted each skip twice (a second review)."""
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    groups = [list(model.parameters())] if optimizers == 1 else [list(model[0].parameters()), list(model[2].parameters())]
    opts = [torch.optim.Adam(params, lr=1e-3, fused=True) for params in groups]
    scaler, capture = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10), Capture()
    monitor = gradexp.Monitor(model, run_dir=str(tmp_path / "run"), every=4, optimizers=opts, sinks=[capture],
                              scaler=scaler)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    poisoned = {1, 2, 4, 9}  # 4 logs; 9 comes after the last logging step (8)
    for step in range(10):
        with monitor.step():
            scaler.scale(F.cross_entropy(model(x), y)).backward()
            if step in poisoned:
                model[0].weight.grad.view(-1)[0] = math.inf
                model[2].weight.grad.view(-1)[0] = math.inf
            for opt in opts:
                scaler.unscale_(opt)
            monitor.gradients_ready()
            for opt in opts:
                scaler.step(opt)
            scaler.update()
            for opt in opts:
                opt.zero_grad(set_to_none=True)
    outcome = monitor.close()
    assert outcome.status == "completed" and outcome.nonfinite is None
    assert capture.logged[4]["amp/skipped_steps"] == 3.0 and not any(t.startswith("update_ratio/") for t in capture.logged[4])
    assert any(t.startswith("update_ratio/") for t in capture.logged[8]) and capture.logged[8]["amp/skipped_steps"] == 3.0
    assert outcome.perf["amp_skipped_steps"] == 4


def test_a_fused_optimizer_stepped_on_scaled_gradients_is_refused_at_a_logging_step(tmp_path):
    """Without scaler.unscale_, a fused optimizer divides the scale out in its own kernel: the Monitor read every
    gradient 1024x too large, in silence (found by an adversarial test)."""
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    monitor = gradexp.Monitor(model, run_dir=str(tmp_path / "run"), every=1, optimizers=[opt], scaler=scaler)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    with pytest.raises(RuntimeError, match=r"call scaler.unscale_\(optimizer\) and monitor.gradients_ready\(\)"):
        with monitor:
            with monitor.step():
                scaler.scale(F.cross_entropy(model(x), y)).backward()
                scaler.step(opt)
                scaler.update()
    assert gradexp.load_summary(str(tmp_path / "run"))["status"] == "failed"


def _scaled_loop(tmp_path, name, scaler, handed_over):
    model, opt_a, _ = _build()
    capture = Capture()
    monitor = gradexp.Monitor(model, run_dir=str(tmp_path / name), every=1, optimizers=[opt_a], sinks=[capture],
                              scaler=scaler if handed_over else None)
    with monitor.step():
        x, y = _data(0)
        loss = F.cross_entropy(model(x), y)
        (loss if scaler is None else scaler.scale(loss)).backward()
        if scaler is not None:
            scaler.unscale_(opt_a)
        monitor.gradients_ready()
        opt_a.step() if scaler is None else (scaler.step(opt_a), scaler.update())
    monitor.close()
    return capture.logged[0]


def test_a_users_grad_scaler_is_divided_out_of_the_activation_gradients(tmp_path):
    """The activation gradients' hooks fire during the scaled backward: their norms are 2^16 too large unless the
    Monitor knows the scaler (found by an audit). The scale is a power of two, so the unscaled values are the fp32
    loop's exactly."""
    plain = _scaled_loop(tmp_path, "plain", None, False)
    scaled = _scaled_loop(tmp_path, "scaled", torch.amp.GradScaler("cpu", init_scale=2.0 ** 16), True)
    unknown = _scaled_loop(tmp_path, "unknown", torch.amp.GradScaler("cpu", init_scale=2.0 ** 16), False)
    act_grads = [t for t in plain if t.startswith("act_grad_norm/")]
    assert act_grads and all(scaled[t] == plain[t] for t in act_grads)
    assert all(unknown[t] == plain[t] * 2.0 ** 16 for t in act_grads)  # what the Monitor cannot know by itself
    body = [t for t in plain if t.startswith("grad_norm/") and "head" not in t and "total" not in t]  # opt_a's
    assert body and all(scaled[t] == plain[t] for t in body)


class ComplexGate(nn.Module):
    """A user's model with a complex weight (a spectral layer's, say) beside real ones."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList([nn.Linear(6, 6), nn.Linear(6, 6)])
        self.gate = nn.Parameter(torch.randn(6, dtype=torch.cfloat))
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.tanh(self.blocks[1](torch.tanh(self.blocks[0](x))))
        return self.head((h * self.gate).real)


def test_a_complex_weights_gradient_norm_and_update_ratio_against_float64(tmp_path):
    model, capture = ComplexGate(), Capture()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = gradexp.Monitor(model, run_dir=str(tmp_path / "run"), every=1, optimizers=[opt], sinks=[capture])
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    with monitor.step():
        F.cross_entropy(model(x), y).backward()
        grad, before = model.gate.grad.clone(), model.gate.detach().clone()
        opt.step()
    assert monitor.close().status == "completed"
    norm = lambda z: torch.linalg.vector_norm(z.abs().double()).item()  # noqa: E731
    assert capture.logged[0]["grad_norm/gate"] == pytest.approx(norm(grad), rel=1e-6)
    assert capture.logged[0]["update_ratio/gate"] == pytest.approx(norm(model.gate.detach() - before) / norm(before),
                                                                   rel=1e-5)


class TiedLM(nn.Module):
    """A language model whose output head shares the embedding's weight (GPT-2 style)."""

    def __init__(self, vocab=20, width=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.hidden = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, x):
        return self.head(torch.tanh(self.hidden(self.embed(x))))


def test_a_tied_weight_counts_in_every_layer_that_owns_it_and_once_in_the_total(tmp_path):
    torch.manual_seed(0)
    model, capture = TiedLM().double(), Capture()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = gradexp.Monitor(model, run_dir=str(tmp_path / "run"), every=1, optimizers=[opt], sinks=[capture],
                              watch=["embed", "hidden", "head"])
    x = torch.randint(0, 20, (8,))
    with monitor.step():
        F.cross_entropy(model(x), x).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}  # the tied weight once, as embed.weight
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.step()
    monitor.close()
    logged = capture.logged[0]
    tied = grads["embed.weight"].norm().item()
    assert logged["grad_norm/head.weight"] == logged["grad_norm/embed.weight"] == pytest.approx(tied, rel=1e-12)
    total = math.sqrt(sum(g.pow(2).sum().item() for g in grads.values()))  # each tensor once
    assert logged["grad_norm/total"] == pytest.approx(total, rel=1e-12)
    moved = (model.embed.weight.detach() - before["embed.weight"]).norm() / before["embed.weight"].norm()
    assert logged["update_ratio/head.weight"] == pytest.approx(moved.item(), rel=1e-10)
    layers = {entry["name"]: entry for entry in json.load(open(tmp_path / "run" / "summary.json"))["layers"]}
    assert layers["head"]["grad_norm"]["first"] == pytest.approx(tied, rel=1e-12)  # the head owns the tied weight too


def test_a_skipped_step_divides_out_the_scale_its_backward_ran_with(tmp_path):
    """Found by a review: on a step the scaler skips, with no gradients_ready() call, the activation gradients were read
    at the `with`'s end, after scaler.update() had halved the scale: act_grad_norm read 2x too large."""
    plain = _scaled_loop(tmp_path, "plain", None, False)
    model, opt_a, _ = _build()
    capture, scaler = Capture(), torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    monitor = gradexp.Monitor(model, run_dir=str(tmp_path / "skipped"), every=1, optimizers=[opt_a], sinks=[capture],
                              scaler=scaler)
    with monitor.step():
        x, y = _data(0)
        scaler.scale(F.cross_entropy(model(x), y)).backward()
        opt_a.param_groups[0]["params"][0].grad.view(-1)[0] = math.inf  # skipped; activation gradients finite
        scaler.step(opt_a)
        scaler.update()  # halves the scale before the Monitor reads anything
    monitor.close()
    act_grads = [t for t in plain if t.startswith("act_grad_norm/")]
    assert capture.logged[0]["amp/skipped_steps"] == 1.0
    assert all(capture.logged[0][t] == plain[t] for t in act_grads)


@pytest.mark.parametrize("probe", ["underflow", "skipped_steps", "loss_scale"])
@pytest.mark.parametrize("enabled", [True, False])
def test_the_run_precision_probes_stay_off_with_a_users_scaler(tmp_path, probe, enabled):
    """Found by a review: Monitor(scaler=...) handed the scaler to the probes as a run's precision, and the probes that
    read gradexp's own precision (underflow, skipped_steps, loss_scale) failed on it; they stay off, as before."""
    model, opt_a, _ = _build()
    scaler = torch.amp.GradScaler("cpu", enabled=enabled)
    monitor = gradexp.Monitor(model, run_dir=str(tmp_path / "run"), every=1, optimizers=[opt_a], scaler=scaler,
                              probes=("grad_norm", "act_grad_norm", probe))
    for step in range(2):
        with monitor.step():
            x, y = _data(step)
            scaler.scale(F.cross_entropy(model(x), y)).backward()
            scaler.unscale_(opt_a)
            scaler.step(opt_a)
            scaler.update()
            opt_a.zero_grad(set_to_none=True)
    assert monitor.close().status == "completed"


def test_watch_patterns_and_refusals(tmp_path):
    model, opt_a, _ = _build()
    monitor = gradexp.Monitor(model, run_dir=str(tmp_path / "a"), watch=["blocks.*.conv"])
    assert [n for n, _ in monitor.layers] == ["blocks.0.conv", "blocks.1.conv", "blocks.2.conv"]
    with pytest.raises(ConfigError, match="invalid value for watch: 'nothing_here'"):  # the Monitor's own argument
        gradexp.Monitor(model, run_dir=str(tmp_path / "b"), watch=["nothing_here"])
    with pytest.raises(ConfigError, match="model.*a model with parameters"):
        gradexp.Monitor(nn.ReLU(), run_dir=str(tmp_path / "c"))
    with pytest.raises(ConfigError, match="every: 0"):
        gradexp.Monitor(model, run_dir=str(tmp_path / "d"), every=0)
    monitor.close()
    with pytest.raises(ConfigError, match="run_dir.*already holds a run"):  # never writes over a run
        gradexp.Monitor(model, run_dir=str(tmp_path / "a"))


def test_values_close_could_not_write_are_refused_where_they_are_given(tmp_path):
    """Found by an adversarial test: activation="ReLU" and record(loss=<per-example losses>) were taken, then
    close() failed on them and the run's summary.json was never written."""
    model, opt_a, _ = _build()
    with pytest.raises(ConfigError, match="activation: 'ReLU' .allowed: None | relu"):
        gradexp.Monitor(model, run_dir=str(tmp_path / "a"), activation="ReLU")
    monitor = gradexp.Monitor(model, run_dir=str(tmp_path / "b"), every=1, optimizers=[opt_a])
    with monitor.step():
        x, y = _data(0)
        losses = F.cross_entropy(model(x), y, reduction="none")
        with pytest.raises(ConfigError, match=r"record\(loss=...\): 'a tensor of shape \(4,\)'.*loss.mean"):
            monitor.record(loss=losses)
        with pytest.raises(ConfigError, match=r"record\(loss=...\): 'a list'"):
            monitor.record(loss=[1.0, 2.0])
        # found by the eighth session's adversarial test: taken as numbers, or failing only when the step ended
        for bad in ["1.5", 10 ** 400, torch.tensor(1 + 2j), torch.empty((), device="meta")]:
            with pytest.raises(ConfigError, match=re.escape("record(loss=...): ") + ".*allowed: a number or a one"):
                monitor.record(loss=bad)
        losses.mean().backward()
        monitor.record(loss=losses.mean(), acc=0.5, np_value=np.float32(0.25), count=np.int64(3),
                       one=torch.tensor([0.5]), clipped=True)  # one number each: taken (numpy scalars were refused for a while)
    assert monitor.close().status == "completed"
    assert gradexp.load_summary(str(tmp_path / "b"))["status"] == "completed"


def test_the_verdict_offers_no_gradexp_override_for_a_users_model(tmp_path):
    model, opt_a, opt_b = _build()
    monitor = gradexp.Monitor(model, run_dir=str(tmp_path / "run"), every=1, optimizers=[opt_a, opt_b])
    for step in range(2):
        _user_step(monitor, model, [opt_a, opt_b], [_data(step)])
    verdict = monitor.close().verdict
    assert verdict["label"] in ("healthy", "vanishing", "exploding") and verdict["suggestions"] == []
    summary = gradexp.load_summary(str(tmp_path / "run"))
    assert [layer["name"] for layer in summary["layers"]] == ["blocks.0", "blocks.1", "blocks.2"]


@pytest.mark.slow
def test_the_example_runs_and_leaves_a_run_gradexp_report_reads(tmp_path):
    for summary in run_example_twice(EXAMPLE, tmp_path, steps=12):  # again: a new folder, no refusal
        assert summary["status"] == "completed" and summary["steps"] == 12 and summary["verdict"]["label"]


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


@pytest.mark.parametrize("arguments, says", [
    ({"model": None}, "model: null (allowed: an nn.Module)"),
    ({"model": lambda x: x}, "model: 'a function'"),
    ({"run_dir": 5}, "run_dir: 5 (allowed: a folder path"),
    ({"run_dir": "FILE"}, "(allowed: a new or empty folder (this is a file))"),
    ({"run_dir": "UNDER_FILE"}, "(allowed: a folder path this process can create (Not a directory))"),  # an OSError
    ({"steps": "10"}, "steps: '10'"), ({"steps": -3}, "steps: -3"),
    ({"optimizers": [1]}, "optimizers: 1 (allowed: torch.optim.Optimizer objects)"),
    ({"optimizers": "MODEL"}, "optimizers: 'a Sequential'"),
    ({"scaler": "yes"}, "scaler: 'yes'"), ({"sinks": [1]}, "sinks: 1"), ({"step_hooks": "no"}, "step_hooks: 'no'"),
    ({"probes": "grad_norm"}, "probes: 'grad_norm' (allowed: a list of probe names"), ({"watch": "0"}, "watch: '0'"),
])
def test_arguments_the_monitor_cannot_use_are_refused_in_one_line_before_a_folder(tmp_path, arguments, says):
    """Found by an adversarial test: each gave a traceback, some at the first step, after the run folder existed
    (which then refused the folder's reuse); a string of probes was read one character at a time."""
    model = _mlp()
    (tmp_path / "FILE").write_text("mine")
    given = {"model": model, "run_dir": str(tmp_path / "run"), **arguments}
    named = {"MODEL": model, "FILE": str(tmp_path / "FILE"), "UNDER_FILE": str(tmp_path / "FILE" / "run")}
    given = {k: named[v] if isinstance(v, str) and v in named else v for k, v in given.items()}
    with pytest.raises(ConfigError) as refused:
        gradexp.Monitor(given.pop("model"), **given)
    assert says in str(refused.value) and "\n" not in str(refused.value)
    assert not (tmp_path / "run").exists() and (tmp_path / "FILE").read_text() == "mine"


@pytest.mark.parametrize("call", ["norm -1", "norm nan", "norm_type 0", "value nan", "value -1"])
def test_a_clip_threshold_gradexp_run_would_refuse_is_refused(tmp_path, call):
    """Found by an adversarial test: clip_grad_norm_(..., -1.0) reversed the gradients (the loss rose, status completed)."""
    model = _mlp()
    monitor = gradexp.Monitor(model, run_dir=str(tmp_path / "run"), every=1)
    kind, value = call.split()
    with pytest.raises(ConfigError, match="allowed: a"), monitor.step():
        model(torch.randn(16, 4)).pow(2).mean().backward()
        if kind == "norm":
            monitor.clip_grad_norm_(model.parameters(), float(value))
        elif kind == "norm_type":
            monitor.clip_grad_norm_(model.parameters(), 1.0, norm_type=float(value))
        else:
            monitor.clip_grad_value_(model.parameters(), float(value))
    monitor.close()


def test_without_optimizers_the_update_is_unseen_not_an_amp_skip(tmp_path):
    """Found by an adversarial test: with no optimizers= every logging step logged amp/skipped_step = 1 (and
    perf.amp_skipped_steps the step count), no clip telemetry, and a NaN gradient went unflagged. Now the gradients
    and the clip are measured against a float64 oracle, no update ratio is claimed, and nothing counts as skipped."""
    model, seen = _mlp(), []
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    class Values:
        def log(self, step, values):
            seen.append(values)

        def close(self, outcome):
            pass

    monitor = gradexp.Monitor(model, run_dir=str(tmp_path / "run"), every=1, sinks=[Values()])
    expected = []
    for step in range(3):
        with monitor.step():
            loss = model(torch.randn(16, 4)).pow(2).mean()
            loss.backward()
            expected.append(math.sqrt(math.fsum(p.grad.double().pow(2).sum().item() for p in model.parameters())))
            monitor.clip_grad_norm_(model.parameters(), 0.1)
            opt.step()
            opt.zero_grad()
            monitor.record(loss=loss)
    outcome = monitor.close()
    assert outcome.status == "completed" and outcome.perf["amp_skipped_steps"] == 0
    assert [v["grad_norm/total"] for v in seen] == pytest.approx(expected, rel=1e-6)
    assert all("amp/skipped_steps" not in v and "clip/scale" in v for v in seen)
    assert not any(k.startswith("update_ratio/") for k in seen[0])

    nan_model = _mlp()
    monitor = gradexp.Monitor(nan_model, run_dir=str(tmp_path / "nan"), every=1)
    with monitor.step():
        (nan_model(torch.randn(16, 4)).sum() * math.nan).backward()
    assert monitor.close().status == "diverged"  # the NaN gradient is flagged
