"""What to try: overrides a user can paste after `gradexp run`, chosen by the cause a verdict found
(saturating activation, init scale, depth, recurrence, learning rate)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

SATURATING = ("sigmoid", "tanh", "softsign")
RELU_LIKE = ("relu", "leaky_relu", "elu", "gelu")
FEEDFORWARD = ("mlp", "cnn")


@dataclass
class Factors:
    """The composed factors a cause can be pinned on (read from the run's config)."""
    family: str = "mlp"
    depth: int = 6
    residual: bool = False
    activation: str = "relu"
    init: str = "default"
    init_gain: float = 1.0
    norm: str = "none"
    lr: float = 1e-3
    clip: str = "none"

    @classmethod
    def from_cfg(cls, cfg: Any) -> "Factors":
        from gradexp.config import model_family

        return cls(model_family(cfg), cfg.model.depth, cfg.model.residual, cfg.activation.name, cfg.init.scheme,
                   cfg.init.gain, cfg.norm.name, cfg.optimizer.lr, cfg.clip.mode)


def suggest(label: str, axis: str, f: Factors, depth_label: Optional[str] = None) -> tuple[str, list[str]]:
    """(cause, overrides) for a label found along `axis` ('depth' or 'time'). `depth_label` adds the depth
    advice to a diverged run whose gradients also exploded or vanished across layers."""
    if label == "healthy":
        return "", []
    if label == "diverged":
        cause, fixes = "learning rate / unbounded updates", [f"optimizer.lr={f.lr / 10:g}", *_clip(f)]
        if depth_label in ("vanishing", "exploding"):
            fixes += suggest(depth_label, "depth", f)[1]
        return cause, _unique(fixes)
    if axis == "time":
        return _through_time(label, f)
    return _vanishing(f) if label == "vanishing" else _exploding(f)


def _vanishing(f: Factors) -> tuple[str, list[str]]:
    if f.activation in SATURATING:
        return f"saturating activation ({f.activation})", _unique(["activation=relu init=kaiming_normal", *_depth(f)])
    if _init_too_small(f):
        return f"init scale ({f.init}, gain {f.init_gain:g})", _unique([_matched_init(f), *_depth(f)])
    return f"depth ({f.depth} layers)", _unique(_depth(f) or [_matched_init(f)])


def _exploding(f: Factors) -> tuple[str, list[str]]:
    fixes = [_matched_init(f)] if f.init_gain > 1 or f.init in ("normal", "default") else []
    if f.init_gain > 1:
        fixes.append("init.gain=1.0")
    fixes += [*_norm(f), *_clip(f), f"optimizer.lr={f.lr / 10:g}"]
    cause = f"init scale ({f.init}, gain {f.init_gain:g})" if f.init_gain > 1 or f.init == "normal" else f"depth ({f.depth} layers)"
    return cause, _unique(fixes)


def _through_time(label: str, f: Factors) -> tuple[str, list[str]]:
    fixes = ["model=lstm", "model=gru"] if f.family == "rnn" else []
    fixes.append("init.recurrent=orthogonal")
    if label == "exploding":
        fixes = [*_clip(f), *fixes, f"optimizer.lr={f.lr / 10:g}"]
    return f"recurrence ({f.family})", _unique(fixes)


def _init_too_small(f: Factors) -> bool:
    if f.init_gain < 1 or f.init == "normal":
        return True
    return f.activation in RELU_LIKE and not f.init.startswith("kaiming")  # xavier/default lose half the variance per ReLU


def _matched_init(f: Factors) -> str:
    """The init scheme that preserves gradient scale for this activation."""
    if f.activation in RELU_LIKE:
        return "init=kaiming_normal"
    return "init=xavier_normal" if f.activation in SATURATING or f.activation == "identity" else "init=kaiming_normal"


def _depth(f: Factors) -> list[str]:
    if f.family in FEEDFORWARD:
        return [*_norm(f), *([] if f.residual else ["model.residual=true"])]
    return _norm(f)


def _norm(f: Factors) -> list[str]:
    if f.norm != "none":
        return []
    return ["norm=batchnorm"] if f.family in FEEDFORWARD else ["norm=layernorm"]


def _clip(f: Factors) -> list[str]:
    return ["clip=norm_1.0"] if f.clip == "none" else []


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
