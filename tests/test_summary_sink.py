"""SummarySink's bookkeeping over logging steps whose tuples of tags change and come back (where each tag goes is
worked out once per tuple): initial, final, per-layer first/last, bptt profiles, the worst underflow."""
import math

from gradexp.outcome import Outcome
from gradexp.sinks.summary import SummarySink

LAYERS = ["layers.0", "layers.1"]


def step_values(step: int) -> dict:
    values = {"loss/train": 2.0 - step, "grad_norm/layers.0.weight": 3.0 + step, "grad_norm/layers.0.bias": 4.0,
              "grad_norm/layers.1.weight": 1.0 + step, "act_std/layers.0": 0.5 + step, "clip/fraction": 0.1 * step}
    if step % 2:  # evaluation, a profile and mixed precision on odd steps only
        values.update({"loss/val": 9.0 - step, "bptt_grad_norm/layers.0": [step, 1.0],
                       "amp/underflow/layers.1": 0.1 * (5 - step)})
    if step >= 2:
        values["act_grad_norm/layers.1"] = 7.0 * step  # appears late: its first is step 2's
    return values


def test_summary_of_steps_with_changing_tags(tmp_path):
    sink = SummarySink(str(tmp_path), [], LAYERS)
    for step in range(5):
        sink.log(step, step_values(step))
    summary = sink.build(Outcome(status="completed", steps=5))
    assert summary["initial"] == {"loss/train": 2.0, "loss/val": 8.0}
    assert summary["final"] == {"loss/train": -2.0, "loss/val": 6.0}
    layer0, layer1 = summary["layers"]
    assert layer0["grad_norm"] == {"first": 5.0, "last": math.hypot(7.0, 4.0)}
    assert layer0["act_std"] == {"first": 0.5, "last": 4.5}
    assert layer1["grad_norm"] == {"first": 1.0, "last": 5.0} and layer1["act_grad_norm"] == {"first": 14.0, "last": 28.0}
    assert summary["bptt"] == {"layers.0": {"first": [1, 1.0], "first_step": 1, "last": [3, 1.0], "last_step": 3}}
    assert summary["amp"]["underflow_max"] == {"layers.1": 0.4} and summary["clip"] == {"clip/fraction": 0.4}


def test_a_restored_summary_goes_on_as_an_uninterrupted_one(tmp_path):
    whole, first_half = SummarySink(str(tmp_path), [], LAYERS), SummarySink(str(tmp_path), [], LAYERS)
    for step in range(5):
        whole.log(step, step_values(step))
    for step in range(2):
        first_half.log(step, step_values(step))
    state = first_half.state_dict()
    assert not [key for key in state if key.startswith("_")]  # the route caches are not run state
    resumed = SummarySink(str(tmp_path), [], LAYERS)
    resumed.log(2, {tag: -1.0 for tag in step_values(2)})  # whatever it held before loading is replaced
    resumed.load_state_dict(state)
    for step in range(2, 5):
        resumed.log(step, step_values(step))
    outcome = Outcome(status="completed", steps=5)
    assert resumed.build(outcome) == whole.build(outcome)


def skipped(step: int, values: dict, count: int) -> dict:
    """A logging step an fp16 scaler skipped: its gradients overflowed at the scale (inf), `count` skips so far."""
    return {**{tag: (math.inf if tag.startswith(("grad_norm", "act_grad")) else v) for tag, v in values.items()},
            **({"bptt_grad_norm/layers.0": [math.inf, 1.0]} if "bptt_grad_norm/layers.0" in values else {}),
            "amp/skipped_steps": float(count)}


def test_first_values_come_from_the_first_step_with_finite_norms_and_bptt_too(tmp_path):
    sink = SummarySink(str(tmp_path), [], LAYERS)
    sink.log(0, skipped(0, step_values(0), 1))
    sink.log(1, skipped(1, step_values(1), 2))
    for step in range(2, 5):
        sink.log(step, {**step_values(step), "amp/skipped_steps": 2.0})
    summary = sink.build(Outcome(status="completed", steps=5))
    assert summary["first_step"] == 2
    sink.first_step = 10 ** 30  # a forged checkpoint's (an adversarial test): not a step of this run
    assert "first_step" not in sink.build(Outcome(status="completed", steps=5))
    assert summary["layers"][0]["grad_norm"]["first"] == math.hypot(5.0, 4.0)
    assert summary["bptt"]["layers.0"]["first"] == [3, 1.0] and summary["bptt"]["layers.0"]["first_step"] == 3


def test_a_run_whose_every_logged_step_was_skipped_keeps_its_layer_entries(tmp_path):
    """A review found every layer's first and last gone: 'Fewer than two hidden layers ... nothing to judge'."""
    sink = SummarySink(str(tmp_path), [], LAYERS)
    for step in range(3):
        sink.log(step, skipped(step, step_values(step), step + 1))
    summary = sink.build(Outcome(status="completed", steps=3))
    assert "first_step" not in summary
    assert summary["layers"][0]["grad_norm"] == {"first": None, "last": None}
    assert summary["layers"][0]["act_std"] == {"first": 0.5, "last": 2.5}


def test_a_checkpoint_from_before_first_step_keeps_its_first_values(tmp_path):
    """A review: the first step logged after resuming such a checkpoint became first_step, over step 0's values."""
    old = SummarySink(str(tmp_path), [], LAYERS)
    for step in range(2):
        old.log(step, step_values(step))
    state = old.state_dict()
    del state["first_step"]
    resumed = SummarySink(str(tmp_path), [], LAYERS)
    resumed.load_state_dict(state)
    resumed.log(2, step_values(2))
    summary = resumed.build(Outcome(status="completed", steps=3))
    assert "first_step" not in summary and summary["layers"][0]["act_std"]["first"] == 0.5
