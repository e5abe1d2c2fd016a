"""Mean-field theory of signal propagation at initialization (Poole et al. 2016; Schoenholz et al. 2017).

For an MLP block z_l = W_l h_{l-1} + b_l, h_l = phi(z_l), with W_l (n_l, n_{l-1}) drawn i.i.d. with
variance sigma_w^2 / fan_in and biases with variance sigma_b^2, in the wide limit:
  forward   q_l   = sigma_w,l^2 * E[phi(z)^2]_{z ~ N(0, q_{l-1})} + sigma_b,l^2   (q of the input: its mean square)
  backward  chi_l = sigma_w,l^2 * E[phi'(z)^2]_{z ~ N(0, q_l)}
and ||dL/dh_{l-1}|| = sqrt(chi_l) * ||dL/dh_l||: sqrt(chi_l) is the predicted per-layer gain of the
act_grad_norm going backward from hidden layer l to layer l-1 (flow.py's convention).

It holds for model=mlp with norm=none and residual=false only (a norm layer or a skip changes both maps);
`not_applicable` says why otherwise. Expectations integrate the model's own activation module numerically (Gauss-Legendre on each
half-line, so the kink of selu / softsign at 0 costs no accuracy), exactly for the piecewise-linear ones."""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from types import SimpleNamespace
from typing import Any, Optional

import numpy as np
import torch
from numpy.polynomial.legendre import leggauss
from torch import nn

from gradexp.config.schema import model_family
from gradexp.models.layers import make_activation
from gradexp.analysis.flow import gain_spread, per_layer_gain
from gradexp.config.registry import ACTIVATIONS, INITS, LEAKY_SLOPE, MODELS

QUADRATURE_POINTS = 96  # per half-line; relative error < 1e-9 for every activation (tests/test_theory.py)
TAIL = 12.0  # standard deviations integrated; the normal mass beyond is ~1e-33


def not_applicable(cfg: Any) -> Optional[str]:
    """None when the mean-field prediction applies to this config, else the reason it does not."""
    family = model_family(cfg)
    if family not in MODELS or not MODELS[family].mean_field:
        covered = " | ".join(name for name, m in MODELS.items() if m.mean_field)
        return f"model={family or cfg.model._target_} (no theory for this model; it covers model={covered} only)"
    if cfg.norm.name != "none":
        return f"norm={cfg.norm.name} (theory covers norm=none only)"
    if cfg.model.residual:
        return "model.residual=true (theory covers plain MLPs only)"
    return None


@lru_cache(maxsize=None)
def _nodes() -> tuple[np.ndarray, np.ndarray]:
    """Nodes x and weights w with sum(w * f(x)) = E[f(x)], x ~ N(0, 1); no node at the kink x = 0."""
    t, w = leggauss(QUADRATURE_POINTS)  # on [-1, 1]
    half_x, half_w = (t + 1) * TAIL / 2, w * TAIL / 2  # on [0, TAIL]
    density = np.exp(-half_x**2 / 2) / math.sqrt(2 * math.pi)
    return np.concatenate([-half_x, half_x]), np.concatenate([half_w * density, half_w * density])


def moments(activation: str, q: float) -> tuple[float, float]:
    """(E[phi(z)^2], E[phi'(z)^2]) for z ~ N(0, q)."""
    slope = ACTIVATIONS[activation].negative_slope  # piecewise linear: exact
    if slope is not None:
        a2 = slope**2
        return q * (1 + a2) / 2, (1 + a2) / 2  # half the mass on each linear piece
    x, w = _nodes()
    z = torch.tensor(math.sqrt(q) * x, dtype=torch.float64, requires_grad=True)  # (P,) quadrature nodes
    phi = make_activation(activation).double()(z)
    (dphi,) = torch.autograd.grad(phi.sum(), z)  # elementwise phi'(z): each phi_i depends on z_i only
    return float(np.dot(w, phi.detach().numpy() ** 2)), float(np.dot(w, dphi.numpy() ** 2))


def weight_variances(init: Any, activation: str, fan_in: int, fan_out: int) -> tuple[float, float]:
    """(sigma_w^2, sigma_b^2) of one Linear layer: fan_in * Var(W) and Var(b), as the init scheme draws them."""
    if init.scheme == "default":  # nn.Linear: kaiming_uniform(a=sqrt(5)) and U(+-1/sqrt(fan_in)) bias, init.gain unused
        return 1.0 / 3.0, 1.0 / (3.0 * fan_in)
    nonlinearity = ACTIVATIONS[activation].kaiming
    kaiming_gain = nn.init.calculate_gain(nonlinearity, LEAKY_SLOPE if nonlinearity == "leaky_relu" else None)
    var = INITS[init.scheme].variance(fan_in, fan_out, init.gain, init.std, kaiming_gain)
    return fan_in * var, 0.0  # named schemes zero the biases


@dataclass
class MeanField:
    layer_names: list[str]  # layers.0 ... layers.{L-1}, forward order
    q: list[float]          # pre-activation variance of each hidden layer
    chi: list[float]        # chi_l: squared gain of the act-grad norm from layer l back to layer l-1

    def predicted_norms(self, last: float) -> list[float]:
        """act_grad_norm of every hidden layer, anchored to `last` (the measured norm at the last hidden layer)."""
        norms = [last]
        for chi in reversed(self.chi[1:]):
            norms.append(norms[-1] * math.sqrt(chi))
        return norms[::-1]


def mean_field(cfg: Any, input_dim: int, input_mean_square: float, init: Any = None) -> MeanField:
    """Iterate the forward variance map through the configured MLP and the backward gain of each layer
    (with `init` in place of cfg.init when given: what another init scheme would do to the same net)."""
    act, width, init = cfg.activation.name, cfg.model.width, cfg.init if init is None else init
    q_prev_h2 = input_mean_square  # E[h^2] feeding layer 0: the data's mean square per feature
    qs, chis = [], []
    for layer in range(cfg.model.depth):
        sw2, sb2 = weight_variances(init, act, input_dim if layer == 0 else width, width)
        q = sw2 * q_prev_h2 + sb2
        q_prev_h2, dphi2 = moments(act, q)
        qs.append(q)
        chis.append(sw2 * dphi2)
    return MeanField([f"layers.{i}" for i in range(cfg.model.depth)], qs, chis)


# --- the baseline beside a run's measurements ---------------------------------------------------------------

def middle(norms: list[float]) -> list[float]:
    """Layers 1 .. L-2 when there are at least 4: the input dimension and the head's rank do not enter there."""
    return norms[1:-1] if len(norms) >= 4 else norms


def _finite(value: float) -> Optional[float]:
    """JSON has no NaN/Inf: a step-0 gradient that is already non-finite leaves null (the status says why)."""
    return value if math.isfinite(value) else None


def theory_section(mf: MeanField, predicted: list, measured: list, step: int) -> dict[str, Any]:
    """per_layer[l]: predicted and measured act_grad_norm, gain = sqrt(chi_l) (norm of layer l-1 over layer l;
    for layers.0 toward the input) and q = the pre-activation variance. measured_gain_spread: the range of the
    measured per-layer gains and a ~95 % interval of their geometric mean (flow.gain_spread), so that agreement
    with predicted_gain can be told from one net's noise."""
    return {
        "step": step,
        "predicted_gain": per_layer_gain(middle(predicted)),  # per layer backward, fit over the middle layers
        "measured_gain": per_layer_gain(middle(measured)),
        "measured_gain_spread": gain_spread(middle(measured)),
        "per_layer": {
            name: {"predicted": p, "measured": m, "gain": math.sqrt(chi), "q": q}
            for name, p, m, chi, q in zip(mf.layer_names, predicted, measured, mf.chi, mf.q)
        },
    }


@dataclass
class Baseline:
    """The prediction for one run, and how it meets the run's measurements: made before training, handed as plain
    data to each sink that shows it (summary.json's "theory" section, theory/* scalars in TensorBoard)."""
    prediction: MeanField
    alternatives: dict[str, float]  # "init=..." -> the mean-field gain that init predicts for the same net

    def tags(self) -> list[str]:
        return [f"act_grad_norm/{name}" for name in self.prediction.layer_names]

    def complete(self, values: dict[str, Any]) -> bool:
        """The logged step carries every hidden layer's act_grad_norm: the first such step anchors the baseline."""
        return all(tag in values for tag in self.tags())

    def predicted(self, values: dict[str, Any]) -> tuple[list, list]:
        """(predicted, measured) act_grad_norm per hidden layer, anchored to the measured last hidden layer."""
        measured = [_finite(values[tag]) for tag in self.tags()]
        return [_finite(p) for p in self.prediction.predicted_norms(measured[-1] or math.nan)], measured

    def section(self, step: int, values: dict[str, Any]) -> dict[str, Any]:
        predicted, measured = self.predicted(values)
        return {**theory_section(self.prediction, predicted, measured, step), "alternatives": self.alternatives}


def baseline(cfg: Any, x_train: Any) -> Optional[Baseline]:
    """The mean-field baseline of this config on this data (x_train: (N, ...), its first layer's input); None where
    the theory does not apply (not_applicable says why)."""
    if not_applicable(cfg) is not None:
        return None
    x = x_train.flatten(1)  # (N, D): the first layer's fan_in is D
    dim, mean_square = x.shape[1], float(x.pow(2).mean())
    return Baseline(mean_field(cfg, dim, mean_square), alternatives(cfg, dim, mean_square))


PROPER_INITS = ("xavier_normal", "kaiming_normal")


def alternatives(cfg: Any, dim: int, mean_square: float) -> dict[str, float]:
    """The overrides of each proper init (gain 1) -> the mean-field per-layer gain it predicts for this net; the
    verdict's advice picks the one closest to 1 (gradexp/analysis/advice.py)."""
    out = {}
    for scheme in PROPER_INITS:
        init = SimpleNamespace(scheme=scheme, gain=1.0, std=cfg.init.std)
        override = f"init={scheme}" + ("" if cfg.init.gain == 1 else " init.gain=1")
        gain = per_layer_gain(middle(mean_field(cfg, dim, mean_square, init).predicted_norms(1.0)))
        if gain is not None:
            out[override] = gain
    return out
