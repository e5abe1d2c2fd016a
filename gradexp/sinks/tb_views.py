"""TensorBoard views beyond plain scalars, written into the run's own event folder through the TensorBoardSink's writer,
so that a sweep opened in TensorBoard shows at once which layers' gradients vanished or exploded in which run:
- gradient-flow scalars that read well on TensorBoard's linear axes: `Flow/gain` (the per-layer gain, 1 = level)
  and `Flow/log10_first_over_last` (one line per run), and `Flow/log10_rel/<layer>` (log10 of the layer's
  gradient norm over the last hidden layer's: 0 = level, -6 = a millionth of it);
- a custom-scalars layout: those two per-run charts first, then one chart per layer (one line per run), then the raw
  per-layer norms;
- the run's HParams entry: the factors (the keys a sweep varies; a single run's own overrides) and the verdict as
  hparams; final metrics, gain, first/last ratio, verdict as metrics; written with the writer's file writer so it
  lands in this run, not in a sub-run as SummaryWriter.add_hparams does;
- a gradient-flow heatmap (layer x logged step, relative to the last layer, one colour scale for every run) and the
  per-layer profile at the last logged step, as images (sinks/flow_images.py).
Close this sink before the TensorBoardSink (which closes the writer)."""
from __future__ import annotations

import math
import os
import re
from typing import Any, Optional

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from gradexp.analysis.flow import first_last_ratio, layer_quantities, per_layer_gain
from gradexp.outcome import Outcome
from gradexp.sinks.state import named, number, require, step_number
from gradexp.sinks.events import ScalarEvents
from gradexp.sinks.images import image_step

# capitalised: TensorBoard's Scalars and Time Series pages sort tag groups upper case first and open only the first two,
# so "Flow" is the open group at the top of the page, above acc/, act_*/, … (checked with scripts/tb_screenshots.py)
GAIN_TAG, RATIO_TAG, REL_PREFIX = "Flow/gain", "Flow/log10_first_over_last", "Flow/log10_rel/"
RAW = {  # regexes over scalar tags; per-layer tags carry "layers.<i>" (the design's naming)
    "grad_norm (every hidden-layer parameter)": ["Multiline", [r"grad_norm/layers\..*"]],
    "act_grad_norm (every hidden layer)": ["Multiline", [r"act_grad_norm/layers\..*"]],
    "act_saturation (every hidden layer)": ["Multiline", [r"act_saturation/layers\..*"]],
}
VERDICT_CODE = {"vanishing": -1.0, "healthy": 0.0, "exploding": 1.0, "diverged": 2.0}
METRIC_TAGS = {"loss/train": "hparams/loss_train", "acc/train": "hparams/acc_train",
               "loss/val": "hparams/loss_val", "acc/val": "hparams/acc_val"}
HEATMAP_TAG, PROFILE_TAG = "grad_flow/heatmap", "grad_flow/profile"


def layout(layer_names: list[str]) -> dict[str, dict[str, list]]:
    """Categories in the order TensorBoard shows them; every chart holds one line per run."""
    per_layer = {f"{name}: log10 of its gradient norm / the last layer's (0 = level)":
                 ["Multiline", [f"^{re.escape(REL_PREFIX + name)}$"]] for name in layer_names}
    return {
        "gradient flow (one line per run)": {
            "per-layer gain (1 = level; below 1: vanishing toward the input, above 1: exploding)":
                ["Multiline", [f"^{re.escape(GAIN_TAG)}$"]],
            "log10(first layer's gradient norm / last layer's)": ["Multiline", [f"^{re.escape(RATIO_TAG)}$"]],
        },
        "gradient per layer, relative to the last layer (one line per run)": per_layer,
        "per-layer raw norms (every layer of every run)": RAW,
    }


def flow_scalars(norms: list[Optional[float]], layer_names: list[str],
                 depths: Optional[list[int]] = None) -> dict[str, float]:
    """The grad_flow/* scalars of one logging step from the per-layer norms (forward order) at their depths (default:
    their places; probes.layers.depths_of)."""
    out: dict[str, float] = {}
    gain, ratio = per_layer_gain(norms, depths), first_last_ratio(norms)
    if gain is not None:
        out[GAIN_TAG] = gain
    if ratio is not None and ratio > 0:
        out[RATIO_TAG] = math.log10(ratio)
    last = norms[-1] if norms else None
    if last is None or not (math.isfinite(last) and last > 0):
        return out
    for name, norm in zip(layer_names, norms):
        if norm is not None and math.isfinite(norm) and norm > 0:
            out[REL_PREFIX + name] = math.log10(norm / last)
    return out


class TensorBoardViews:
    def __init__(self, writer: SummaryWriter, hparam_dict: dict[str, Any], layer_names: list[str],
                 depths: Optional[list[int]] = None):
        self.writer, self.hparam_dict, self.layer_names, self.depths = writer, hparam_dict, layer_names, depths
        self.latest: dict[str, float] = {}
        self.history: dict[int, dict[str, float]] = {}  # logged step -> per-layer quantities
        self.events = ScalarEvents()
        writer.add_custom_scalars(layout(layer_names))

    def log(self, step: int, values: dict[str, float]) -> None:
        self.latest.update(values)
        per_layer = layer_quantities(values, self.layer_names)
        if not per_layer:
            return
        self.history[step] = per_layer
        quantity = next((q for q in ("act_grad_norm", "grad_norm") if f"{q}/{self.layer_names[-1]}" in per_layer), None)
        if quantity is None:
            return
        norms = [per_layer.get(f"{quantity}/{name}") for name in self.layer_names]
        scalars = flow_scalars(norms, self.layer_names, self.depths)
        event = self.events.event(tuple(scalars), scalars.values())
        self.writer._get_file_writer().add_event(event, step)  # one event for the step's flow scalars

    def state_dict(self) -> dict:
        """The per-layer history behind the heatmap, so a resumed run's images cover the whole run (checkpoint.pt)."""
        return {"history": {step: dict(row) for step, row in self.history.items()}}

    def load_state_dict(self, state: dict) -> None:
        steps = named(named(number), key=step_number)  # step -> {tag: value}
        require(isinstance(state, dict) and steps(state.get("history")), "heatmap history of the views")
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
        if quantity is None or len(self.layer_names) < 2:  # one layer has no flow across depth to draw: a blank bar
            return                                          # said "level" (a one-layer RNN's is through time: bptt)
        from gradexp.sinks import flow_images as figures  # matplotlib only when a run ends

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


def run_hparams(cfg: Any, overrides: list[str] = ()) -> dict[str, Any]:
    """HParams columns: the model family and the factors of this run — in a sweep the keys the sweep varies, else
    the run's own overrides (a key the user did not set is the same in every run and would only crowd the table)."""
    from gradexp.config.schema import model_family

    factors = sweep_factors()
    chosen = {}
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if factors is None or key in factors:
            chosen[key] = _number_or_text(value)
    return {"model": model_family(cfg), **chosen}


def sweep_factors() -> Optional[set[str]]:
    """Inside a Hydra multirun job: the keys its sweep varies (read from the sweep's multirun.yaml, where the sweep's
    own syntax is kept, and the preset's hydra.sweeper.params); None outside a sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hydra_cfg = HydraConfig.get()
    record = os.path.join(hydra_cfg.sweep.dir, "multirun.yaml")
    given = [str(o) for o in OmegaConf.load(record).hydra.overrides.task] if os.path.isfile(record) else []
    swept = {o.key_or_group for o in OverridesParser.create().parse_overrides(given) if o.is_sweep_override()}
    return swept | set((hydra_cfg.sweeper.get("params") or {}).keys())


def _number_or_text(value: str) -> Any:
    """'20' -> 20, '0.01' -> 0.01 (HParams filters numbers by range), anything else stays text."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value
