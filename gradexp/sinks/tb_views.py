"""TensorBoard views beyond plain scalars, written into the run's own event folder through the TensorBoardSink's writer:
- a custom-scalars layout: every layer of a per-layer quantity on one chart;
- the run's HParams entry (composed factors as hparams; final metrics, gain, first/last ratio, verdict as metrics),
  written with the writer's file writer so it lands in this run, not in a sub-run as SummaryWriter.add_hparams does;
- a gradient-flow heatmap (layer x logged step) and the per-layer profile at the last logged step, as images.
Close this sink before the TensorBoardSink (which closes the writer)."""
from __future__ import annotations

import math
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from gradexp.sinks.summary import layer_quantities
from gradexp.sinks.tensorboard import image_step
from gradexp.train import Outcome

# regexes over scalar tags; per-layer tags carry "layers.<i>" (the design's naming)
LAYOUT = {
    "per-layer": {
        "grad_norm (every hidden-layer parameter)": ["Multiline", [r"grad_norm/layers\..*"]],
        "act_grad_norm (every hidden layer)": ["Multiline", [r"act_grad_norm/layers\..*"]],
        "act_saturation (every hidden layer)": ["Multiline", [r"act_saturation/layers\..*"]],
    },
}
VERDICT_CODE = {"vanishing": -1.0, "healthy": 0.0, "exploding": 1.0, "diverged": 2.0}
METRIC_TAGS = {"loss/train": "hparams/loss_train", "acc/train": "hparams/acc_train",
               "loss/val": "hparams/loss_val", "acc/val": "hparams/acc_val"}
HEATMAP_TAG, PROFILE_TAG = "grad_flow/heatmap", "grad_flow/profile"


class TensorBoardViews:
    def __init__(self, writer: SummaryWriter, hparam_dict: dict[str, Any], layer_names: list[str]):
        self.writer, self.hparam_dict, self.layer_names = writer, hparam_dict, layer_names
        self.latest: dict[str, float] = {}
        self.history: dict[int, dict[str, float]] = {}  # logged step -> per-layer quantities
        writer.add_custom_scalars(LAYOUT)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.latest.update(values)
        per_layer = layer_quantities(values, self.layer_names)
        if per_layer:
            self.history[step] = per_layer

    def state_dict(self) -> dict:
        """The per-layer history behind the heatmap, so a resumed run's images cover the whole run (checkpoint.pt)."""
        return {"history": {step: dict(row) for step, row in self.history.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.history = {int(step): dict(row) for step, row in state["history"].items()}

    def close(self, outcome: Outcome) -> None:
        self.write_hparams(outcome)
        self.write_images(outcome)
        self.writer.flush()

    def write_hparams(self, outcome: Outcome) -> None:
        verdict = getattr(outcome, "verdict", None) or {}
        metrics = {tag: self.latest[key] for key, tag in METRIC_TAGS.items() if key in self.latest}
        for name in ("gain", "first_last_ratio"):
            if verdict.get(name) is not None:
                metrics[f"hparams/{name}"] = verdict[name]
        if verdict.get("label") in VERDICT_CODE:
            metrics["hparams/verdict"] = VERDICT_CODE[verdict["label"]]
        hp = {**self.hparam_dict, "status": outcome.status, "verdict": verdict.get("label", "none")}
        exp, ssi, sei = hparams(hp, metrics)
        for proto in (exp, ssi, sei):
            self.writer.file_writer.add_summary(proto)
        # at the number of steps done; a failed run's outcome may not know it, so never before the last logged
        # step: a resumed run's purge then removes these points along with the rest of the abandoned tail
        step = max(outcome.steps, max(self.history, default=-1) + 1)
        for tag, value in metrics.items():  # the plugin reads metric values from these scalar tags of this run
            self.writer.add_scalar(tag, value if math.isfinite(value) else math.nan, global_step=step)

    def write_images(self, outcome: Outcome) -> None:
        quantity = self._quantity()
        if quantity is None:
            return
        from gradexp.sinks import figures  # matplotlib only when a run ends

        steps = sorted(self.history)
        grid = [[self.history[s].get(f"{quantity}/{name}", math.nan) for s in steps] for name in self.layer_names]
        at = image_step(steps, outcome)  # a resumable run's images are purged when it resumes
        self.writer.add_figure(HEATMAP_TAG, figures.heatmap(grid, steps, quantity), global_step=at)
        last = [row[-1] for row in grid]
        self.writer.add_figure(PROFILE_TAG, figures.profile(last, quantity, steps[-1]), global_step=at)

    def _quantity(self) -> str | None:
        """act_grad_norm when it was measured, else the per-layer parameter grad norm."""
        seen = {key.split("/", 1)[0] for row in self.history.values() for key in row}
        return next((q for q in ("act_grad_norm", "grad_norm") if q in seen), None)


def flat_hparams(container: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'model': {'depth': 20}} -> {'model.depth': 20}; None becomes 'null' (hparams take bool/str/int/float)."""
    flat: dict[str, Any] = {}
    for key, value in container.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, (bool, str, int, float)):
            flat[name] = value
        else:
            flat[name] = "null" if value is None else str(value)
    return flat


def run_hparams(cfg: Any) -> dict[str, Any]:
    """The composed factors of a run: every scalar key (verdict thresholds left out), the model as its family name."""
    from omegaconf import OmegaConf

    from gradexp.config import model_family

    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("diagnose", None)
    flat = flat_hparams(container)
    flat.pop("model._target_", None)
    return {"model": model_family(cfg), **flat}
