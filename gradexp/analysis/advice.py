"""What to try: overrides a user can paste after `gradexp run`, chosen by the cause the evidence points to
(saturation, dead units, init scale against the mean-field gain of a proper init, the activation's derivative,
depth, recurrence, learning rate).

Every suggestion is a string of space-separated overrides that changes at least one value of this run (one that
is already in force is dropped) and that gradexp accepts (tests/test_advice.py runs each one for a step)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from gradexp.config.registry import ACTIVATIONS, MODELS, PRECISIONS, precision_name
from gradexp.config.schema import CUSTOM

UNDERFLOW_LOST = 0.05   # an fp16 run that flushes this share of a layer's gradient entries is told so
SATURATED = 0.2          # a layer with this share of saturated entries (dead units) is blamed on them
HEALTHY_THEORY = 0.8     # a proper init whose mean-field gain is at least this fixes an init-scale problem
RECURRENT_GAIN_RANGE = (0.5, 2.0)  # suggested init.recurrent_gain stays within this
DEFAULT_RECURRENT_RADIUS = 1 / math.sqrt(3)  # PyTorch's U(+-1/sqrt(H)) weight_hh: spectral radius ~ 1/sqrt(3)


@dataclass
class Factors:
    """The composed factors a cause can be pinned on (read from the run's config), and the values in force."""
    family: str = "mlp"
    depth: int = 6
    residual: bool = False
    activation: str = "relu"
    init: str = "default"
    init_gain: float = 1.0
    norm: str = "none"
    lr: float = 1e-3
    clip: str = "none"
    recurrent: Optional[str] = None          # init.recurrent (None: same as init)
    recurrent_gain: Optional[float] = None   # init.recurrent_gain (None: init.gain)
    clip_option: str = "none"                # the clip group option in force, e.g. norm_1.0
    precision: str = "fp32"                  # train.precision, canonical name
    loss_scale: str = "none"                 # the loss scale in force: dynamic | none | the fixed number
    norm_position: Optional[str] = None      # model.norm_position (transformer); None: the family has no such key
    warmup_steps: int = 0                    # schedule.warmup_steps
    steps: int = 500                         # train.steps: a suggested warmup is a third of them
    # why mean-field theory has no prediction for this run (analysis/theory.py not_applicable), None where it has one
    theory_note: Optional[str] = None

    @classmethod
    def from_cfg(cls, cfg: Any, watched: Optional[int] = None) -> "Factors":
        """watched: the model's hidden layers (those watched by default), the depth the verdict's cause names: a
        user's class (model=custom) has that depth whatever gradexp's model.depth key says (found by a user: a
        2-layer model's cause read "depth (6 layers)"), and so does a ResNet, whose model.depth counts the blocks of
        one stage (found by a new user: "depth (3 layers)" over 10 layers measured)."""
        from gradexp.analysis.theory import not_applicable
        from gradexp.config.schema import model_family

        c = cfg.clip
        precision = precision_name(cfg.train.precision)
        scale = cfg.train.loss_scale
        scale = PRECISIONS[precision].default_loss_scale if scale is None else f"{scale:g}" if isinstance(scale, (int, float)) else scale
        option = "none" if c.mode == "none" else f"norm_{c.max_norm}" if c.mode == "norm" else f"value_{c.value}"
        family = model_family(cfg)
        takes_position = family in MODELS and "norm_position" in MODELS[family].keys
        position = (cfg.model.norm_position or "pre") if takes_position else None  # the constructor's default
        depth = cfg.model.depth if watched is None else watched
        return cls(family, depth, cfg.model.residual, cfg.activation.name, cfg.init.scheme,
                   cfg.init.gain, cfg.norm.name, cfg.optimizer.lr, c.mode, cfg.init.recurrent, cfg.init.recurrent_gain,
                   option, precision, scale, position, cfg.schedule.warmup_steps, cfg.train.steps, not_applicable(cfg))

    def in_force(self) -> dict[str, str]:
        """override key -> the value this run has, as the command line would spell it."""
        return {
            "model": self.family, "activation": self.activation, "init": self.init, "norm": self.norm,
            "clip": self.clip_option, "model.residual": str(self.residual).lower(),
            "init.gain": f"{self.init_gain:g}", "optimizer.lr": f"{self.lr:g}",
            "init.recurrent": self.recurrent or self.init,
            "init.recurrent_gain": f"{self.recurrent_gain if self.recurrent_gain is not None else self.init_gain:g}",
            "train.precision": self.precision, "train.loss_scale": self.loss_scale,
            "model.norm_position": self.norm_position or "", "schedule.warmup_steps": str(self.warmup_steps),
        }


@dataclass
class Evidence:
    """What the logs say at the step that decided the verdict (diagnose.gather)."""
    when: str = "first"                       # "first" | "last" logged step
    first_step: int = 0                       # the step "first" is (later than 0 where a loss scaler skipped step 0)
    saturation: Optional[float] = None        # the largest act_saturation over layers (dead share for ReLUs)
    gain: Optional[float] = None              # measured per-layer gain
    time_gain: Optional[float] = None         # measured per-time-step gain (recurrent models)
    theory_gain: Optional[float] = None       # mean-field gain of this run's init (step 0, plain MLPs)
    measured_init_gain: Optional[float] = None  # the measured gain it is compared with (step 0, same layers)
    theory_alternatives: dict[str, float] = field(default_factory=dict)  # "init=..." -> its mean-field gain
    underflow: Optional[float] = None         # the largest amp/underflow share of any layer at any logged step


def suggest(label: str, axis: str, f: Factors, ev: Evidence, end_label: Optional[str] = None) -> tuple[str, str, list[str]]:
    """(cause, the evidence sentence behind it, overrides) for a label found along `axis` ('depth' or 'time').
    `end_label` adds the flow advice to a diverged run whose gradients also exploded or vanished at the end."""
    if label == "healthy":
        return "", "", []
    if label == "diverged":
        fixes = [*_post_norm(f), f"optimizer.lr={f.lr / 10:g}", *_clip(f)]
        if end_label in ("vanishing", "exploding"):
            fixes += suggest(end_label, "depth", f, ev)[2]
        return "learning rate / unbounded updates", "", changes(fixes, f)
    if axis == "time":
        cause, why, fixes = _through_time(label, f, ev)
    elif label == "vanishing":
        cause, why, fixes = _vanishing(f, ev)
    else:
        cause, why, fixes = _exploding(f)
    return cause, why, changes(fixes, f)


def _blocks_gradient(activation: str) -> bool:
    """Whether a saturated entry of this activation passes (almost) no gradient. A ReLU unit that is <= 0 for the
    whole batch is dead (derivative 0); a GELU, ELU, SELU, Mish or leaky ReLU unit there still passes gradient, so its
    act_saturation share is reported but never blamed for vanishing."""
    entry = ACTIVATIONS[activation]
    return entry.saturation == "squashing" or (entry.saturation == "dead_units" and entry.negative_slope == 0.0)


def _vanishing(f: Factors, ev: Evidence) -> tuple[str, str, list[str]]:
    if ev.saturation is not None and ev.saturation >= SATURATED and _blocks_gradient(f.activation):
        what = "dead units" if ACTIVATIONS[f.activation].saturation == "dead_units" else "saturating activation"
        at = f"at step {ev.first_step}" if ev.when == "first" else "at the end of training"
        why = f"Up to {ev.saturation:.0%} of a layer's {'units are dead' if what == 'dead units' else 'entries are saturated'} {at} (act_saturation)."
        theory = _theory_cause(f, ev, why)
        if what == "dead units" and theory is not None and theory[0].startswith("init scale") \
                and ev.theory_gain < HEALTHY_THEORY:  # this init's predicted gain is low, another's is healthy
            # a ReLU net is scale-invariant: its dead units are the same at every init scale, so they cannot tell a
            # bad init from a good one; mean-field theory can (found by a new user: he2015's Xavier job was blamed on
            # dead units its healthy Kaiming twin had as well)
            return theory
        fixes = ["activation=leaky_relu init=kaiming_normal"] if what == "dead units" else ["activation=relu init=kaiming_normal"]
        return f"{what} ({f.activation})", why, [*fixes, *_depth(f)]
    at = f"At step {ev.first_step}" if ev.when == "first" else "At the end of training"
    quiet = "" if ev.saturation is None else f"{at} saturation is not the cause (act_saturation ≤ {ev.saturation:.3f} in every layer)."
    if f.norm_position == "post":  # xiong2020: post-LN's gradient shrinks toward the input blocks; pre-LN or warmup fix it
        return "post-LN (the norm after each residual add)", quiet, [*_post_norm(f), *_depth(f)]
    theory = _theory_cause(f, ev, quiet)
    if theory is not None:
        return theory
    if f.activation == "sigmoid":
        return "activation (sigmoid): its derivative is at most 1/4", quiet, ["activation=relu init=kaiming_normal", *_depth(f)]
    if f.family == CUSTOM and f.init == "default":  # the user's class keeps its own init: gradexp cannot blame it
        return f"depth ({f.depth} layers) at the model's own init", quiet, [_matched_init(f), *_depth(f)]
    if _init_too_small(f):
        return f"init scale ({f.init}, gain {f.init_gain:g})", quiet, [_matched_init(f), *_depth(f)]
    return f"depth ({f.depth} layers)", quiet, _depth(f) or [_matched_init(f)]


def _theory_cause(f: Factors, ev: Evidence, said: str) -> Optional[tuple[str, str, list[str]]]:
    """Where mean-field theory has a prediction for this run: the init scale, when a proper init predicts a healthy
    gain, else the activation (low gain at any init); None without a prediction. `said`: the evidence so far."""
    best = _best_alternative(ev)
    if ev.theory_gain is None or ev.measured_init_gain is None or best is None:
        return None
    override, predicted = best
    other = f"{override} predicts ×{predicted:.3g}" if override != f"init={f.init}" else "no other init predicts more"
    # "over the layers theory covers": its fit leaves out the first and last layers of four or more, so it may differ
    # from the per-layer gain quoted before it (found by an audit: ×0.418 and ×0.401 "at step 0" in one panel)
    why = (f"{said} Over the layers theory covers, the gain at step {ev.first_step} is ×{ev.measured_init_gain:.3g} "
           f"per layer measured, ×{ev.theory_gain:.3g} by mean-field theory for init={f.init}; {other}.").strip()
    if predicted >= HEALTHY_THEORY:
        return f"init scale ({f.init}, gain {f.init_gain:g})", why, [override, *_depth(f)]
    return f"activation ({f.activation}): low gain at any init", why, ["activation=relu init=kaiming_normal", *_depth(f)]


def _best_alternative(ev: Evidence) -> Optional[tuple[str, float]]:
    """The proper init whose mean-field gain is closest to 1."""
    if not ev.theory_alternatives:
        return None
    return min(ev.theory_alternatives.items(), key=lambda kv: abs(math.log(kv[1])) if kv[1] > 0 else math.inf)


def _exploding(f: Factors) -> tuple[str, str, list[str]]:
    fixes = [_matched_init(f)] if f.init_gain > 1 or f.init in ("normal", "default") else []
    if f.init_gain > 1:
        fixes.append("init.gain=1.0")
    by_init = f.init_gain > 1 or f.init == "normal"
    # skips only where depth is the cause: around layers that each grow the gradient they add to it (a review: a
    # gain-1.6 MLP went from x1.58 to x1.97 per layer with them)
    fixes += [*_post_norm(f), *_norm(f), *([] if by_init else _residual(f)), *_clip(f), f"optimizer.lr={f.lr / 10:g}"]
    cause = f"init scale ({f.init}, gain {f.init_gain:g})" if by_init else f"depth ({f.depth} layers)"
    return cause, "", fixes


def _through_time(label: str, f: Factors, ev: Evidence) -> tuple[str, str, list[str]]:
    """A first-order remedy: the recurrent Jacobian scales with weight_hh's spectral radius, so dividing the
    radius by the measured per-step gain moves that gain toward 1 (pascanu2013 shows the effect)."""
    radius = _recurrent_radius(f)
    target = None
    if ev.time_gain:
        low, high = RECURRENT_GAIN_RANGE
        target = min(high, max(low, round(radius / ev.time_gain, 2)))
    fixes = ["model=lstm", "model=gru"] if f.family == "rnn" and label == "vanishing" else []  # hochreiter1997
    if target is not None:
        fixes.append(f"init.recurrent=orthogonal init.recurrent_gain={target:g}")
    if label == "exploding":
        fixes = [*_clip(f), *fixes, f"optimizer.lr={f.lr / 10:g}"]
    why = ""
    if ev.time_gain is not None:
        why = (f"The recurrent weights ({f.recurrent or f.init}, weight_hh) have spectral radius ~{radius:.2g} and the "
               f"gradient changes ×{ev.time_gain:.3g} per time step.")
    return f"recurrence ({f.family})", why, fixes


def _recurrent_radius(f: Factors) -> float:
    """Spectral radius of weight_hh at init: orthogonal and xavier (square) give the gain; PyTorch's default
    ~1/sqrt(3); other schemes: the gain (a rough figure)."""
    scheme = f.recurrent or f.init
    gain = f.recurrent_gain if f.recurrent_gain is not None else f.init_gain
    return DEFAULT_RECURRENT_RADIUS if scheme == "default" else gain


def _init_too_small(f: Factors) -> bool:
    if f.init_gain < 1 or f.init == "normal":
        return True
    # xavier/default lose half the variance per ReLU-like unit: those want kaiming
    return ACTIVATIONS[f.activation].matched_init.startswith("kaiming") and not f.init.startswith("kaiming")


def _matched_init(f: Factors) -> str:
    """The init scheme that preserves gradient scale for this activation."""
    return f"init={ACTIVATIONS[f.activation].matched_init}"


def _post_norm(f: Factors) -> list[str]:
    """A post-LN transformer: pre-LN, or a linear warmup (xiong2020 shows both keep it training)."""
    if f.norm_position != "post":
        return []
    warmup = f.steps // 3  # W = 1 is no warmup at all
    return ["model.norm_position=pre", *([f"schedule.warmup_steps={warmup}"] if f.warmup_steps == 0 and warmup > 1 else [])]


def _depth(f: Factors) -> list[str]:
    if f.family not in MODELS:
        return []
    if f.norm_position is not None:  # a transformer: its blocks are always residual
        return [*_post_norm(f), *_norm(f)]
    return [*_norm(f), *_residual(f)]


def _residual(f: Factors) -> list[str]:
    """Skips where the family takes them and the run has none: the gradient crosses fewer layers' Jacobians (a
    non-residual ResNet's exploding gradient got only clipping and a lower rate; found by a new user)."""
    return ["model.residual=true"] if f.family in MODELS and MODELS[f.family].residual and not f.residual else []


def _norm(f: Factors) -> list[str]:
    return [] if f.norm != "none" or f.family not in MODELS else [f"norm={MODELS[f.family].advice_norm}"]


def _clip(f: Factors) -> list[str]:
    return ["clip=norm_1.0"] if f.clip == "none" else []


def changes(suggestions: list[str], f: Factors) -> list[str]:
    """Each suggestion with the overrides already in force left out; one that would change nothing is dropped.
    A model that is not one of gradexp's families (the user's own, gradexp.Monitor) has none of these keys: no
    suggestion is made for it rather than one it cannot take."""
    if f.family not in MODELS:
        return []
    current, out = f.in_force(), []
    for suggestion in suggestions:
        kept = [o for o in suggestion.split() if not _same(current.get(_key(o)), o.split("=", 1)[1])]
        if kept:
            out.append(" ".join(kept))
    return list(dict.fromkeys(out))


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _same(current: Optional[str], value: str) -> bool:
    if current is None:
        return False
    try:
        return math.isclose(float(current), float(value))
    except ValueError:
        return current == value


def precision_loss(f: Factors, ev: Evidence) -> tuple[str, list[str]]:
    """(sentence, overrides) when fp16 threw away a real share of the gradient; ('', []) otherwise. Only fp16:
    bf16 keeps float32's exponent range, so its gradients do not flush to zero (and it is not blamed for it)."""
    if f.precision != "fp16" or ev.underflow is None or ev.underflow < UNDERFLOW_LOST:
        return "", []
    scaled = "" if f.loss_scale == "none" else f" even with train.loss_scale={f.loss_scale}"
    why = (f"fp16 flushed up to {ev.underflow:.0%} of a layer's nonzero gradient entries to zero or subnormal"
           f"{scaled} (amp/underflow).")
    return why, changes(["train.loss_scale=dynamic", "train.precision=bf16"], f)
