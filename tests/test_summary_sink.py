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
