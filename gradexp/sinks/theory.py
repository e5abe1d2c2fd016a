"""The mean-field baseline in TensorBoard: theory/act_grad_norm/<layer> beside the measured act_grad_norm, at the
first logged step that carries every hidden layer's (gradexp/analysis/theory.py computes it before training;
summary.json's "theory" section is the summary sink's, from the same Baseline). Written through the run's event
writer, which the run factory hands to each TensorBoard sink."""
from __future__ import annotations

from typing import Any

from tensorboard.compat.proto.summary_pb2 import Summary

from gradexp.analysis.theory import Baseline
from gradexp.outcome import Outcome
from gradexp.sinks.state import require


class TheorySink:
    def __init__(self, baseline: Baseline, writer: Any):
        self.baseline, self.writer = baseline, writer
        self.written = False  # run state: a resumed run does not write the step-0 baseline again

    def log(self, step: int, values: dict[str, float]) -> None:
        if self.written or not self.baseline.complete(values):
            return
        predicted, _ = self.baseline.predicted(values)
        scalars = {f"theory/{tag}": p for tag, p in zip(self.baseline.tags(), predicted) if p is not None}
        summary = Summary(value=[Summary.Value(tag=t, simple_value=v) for t, v in scalars.items()])
        self.writer._get_file_writer().add_summary(summary, step)
        self.written = True

    def state_dict(self) -> dict[str, Any]:
        return {"written": self.written}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        require(isinstance(state, dict) and isinstance(state.get("written"), bool), "theory sink state")
        self.written = state["written"]

    def close(self, outcome: Outcome) -> None:
        pass
