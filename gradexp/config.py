"""Structured-config schema (typed dataclasses) and the value checks that run before any training.

The schema makes Hydra reject misspelled keys (struct mode) and wrong types at composition time;
`validate` adds ranges and cross-field rules and raises ConfigError, which the CLI prints as one line.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

MODEL_FAMILIES = ("mlp", "cnn", "rnn", "lstm", "gru")
RECURRENT = ("rnn", "lstm", "gru")
ACTIVATIONS = ("relu", "leaky_relu", "elu", "selu", "gelu", "tanh", "sigmoid", "softsign", "identity")
INIT_SCHEMES = ("default", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "orthogonal", "normal")
NORMS = ("none", "batchnorm", "layernorm")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
CLIP_MODES = ("none", "norm", "value")
SCHEDULES = ("none", "step", "cosine")
DEVICES = ("auto", "cpu", "cuda")
MODEL_TARGETS = ("gradexp.models.mlp.MLP", "gradexp.models.cnn.CNN", "gradexp.models.rnn.RNN",
                 "gradexp.models.rnn.LSTM", "gradexp.models.rnn.GRU")
GROUPS = ("model", "activation", "init", "norm", "optimizer", "clip", "data", "schedule", "experiment")
MAX_SEED = 2**63 - 1  # torch.manual_seed and the task generators take a signed 64-bit seed
ENV_RESOLVERS = ("oc.env", "oc.decode")  # read the environment (or parse strings into config): never recorded


@dataclass
class ModelConf:
    _target_: str = "gradexp.models.mlp.MLP"
    depth: int = 6
    width: int = 64
    residual: bool = False


@dataclass
class ActivationConf:
    name: str = "relu"


@dataclass
class InitConf:
    scheme: str = "default"
    gain: float = 1.0
    std: float = 0.02
    recurrent: Optional[str] = None
    recurrent_gain: Optional[float] = None  # gain of weight_hh; None = gain


@dataclass
class NormConf:
    name: str = "none"


@dataclass
class OptimizerConf:
    name: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0


@dataclass
class ClipConf:
    mode: str = "none"
    max_norm: float = 1.0
    norm_type: float = 2.0
    value: float = 1.0


@dataclass
class DataConf:
    name: str = "digits"
    n_train: Optional[int] = None
    n_val: Optional[int] = None
    seq_len: Optional[int] = None


@dataclass
class ScheduleConf:
    name: str = "none"
    step_size: int = 100
    gamma: float = 0.5


@dataclass
class TrainConf:
    steps: int = 500
    batch_size: int = 64
    eval_every: int = 50
    stop_on_nonfinite: bool = True
    checkpoint_every: int = 100     # periodic checkpoint interval in steps; 0 = only when interrupted
    deterministic: bool = False     # torch.use_deterministic_algorithms (slower on CUDA)
    threads: Optional[int] = None   # torch CPU threads; None = the launcher's share, else torch's default


@dataclass
class LogConf:
    every: int = 25
    histograms_every: int = 0   # 0 = off; else a multiple of every
    bptt_every: int = 100       # recurrent models only; 0 = off; else a multiple of every


@dataclass
class RegConf:
    l1: float = 0.0
    l2: float = 0.0


@dataclass
class DiagnoseConf:
    """Verdict thresholds (gradexp/diagnose.py). Gains are factors per layer (or per time step) travelled backward."""
    vanishing_gain: float = 0.8       # per-layer gain below this: vanishing
    exploding_gain: float = 1.25      # per-layer gain above this: exploding
    vanishing_ratio: float = 1e-3     # first-layer / last-layer gradient norm below this: vanishing
    exploding_ratio: float = 1e3      # ... above this: exploding
    time_vanishing_gain: float = 0.9  # recurrent models: gain per time step below this: vanishing through time
    time_exploding_gain: float = 1.1  # ... above this: exploding through time


@dataclass
class Config:
    model: ModelConf = field(default_factory=ModelConf)
    activation: ActivationConf = field(default_factory=ActivationConf)
    init: InitConf = field(default_factory=InitConf)
    norm: NormConf = field(default_factory=NormConf)
    optimizer: OptimizerConf = field(default_factory=OptimizerConf)
    clip: ClipConf = field(default_factory=ClipConf)
    data: DataConf = field(default_factory=DataConf)
    schedule: ScheduleConf = field(default_factory=ScheduleConf)
    train: TrainConf = field(default_factory=TrainConf)
    log: LogConf = field(default_factory=LogConf)
    reg: RegConf = field(default_factory=RegConf)
    diagnose: DiagnoseConf = field(default_factory=DiagnoseConf)
    seed: int = 0
    device: str = "auto"
    resume: Optional[str] = None    # a run folder to continue in place (gradexp/resume.py)


def register_schema() -> None:
    ConfigStore.instance().store(name="gradexp_schema", node=Config)


class ConfigError(ValueError):
    """A value the experiment cannot run with; str() is the one line the user sees."""

    def __init__(self, key: str, value: Any, allowed: str):
        super().__init__(f"invalid value for {key}: {value!r} (allowed: {allowed})")
        self.key, self.value, self.allowed = key, value, allowed


def model_family(cfg: Any) -> str:
    """'gradexp.models.rnn.LSTM' -> 'lstm'."""
    return cfg.model._target_.rsplit(".", 1)[-1].lower()


# (key, test, what is allowed) — checked in order; the first failure is reported
_RANGES = [
    ("model.depth", lambda v: v >= 1, "an integer >= 1"),
    ("model.width", lambda v: v >= 1, "an integer >= 1"),
    ("init.gain", lambda v: 0 < v < math.inf, "a finite number > 0"),
    ("init.std", lambda v: 0 < v < math.inf, "a finite number > 0"),
    ("optimizer.lr", lambda v: 0 < v < math.inf, "a finite number > 0"),
    ("init.recurrent_gain", lambda v: v is None or 0 < v < math.inf, "a finite number > 0, or null for init.gain"),
    ("optimizer.momentum", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("optimizer.weight_decay", lambda v: 0 <= v < math.inf, "a finite number >= 0"),
    ("clip.max_norm", lambda v: 0 < v < math.inf, "a finite number > 0"),
    ("clip.norm_type", lambda v: v > 0, "a number > 0 (inf for the max norm)"),
    ("clip.value", lambda v: 0 < v < math.inf, "a finite number > 0"),
    ("data.n_train", lambda v: v is None or v >= 1, "an integer >= 1, or null for the task's default"),
    ("data.n_val", lambda v: v is None or v >= 1, "an integer >= 1, or null for the task's default"),
    ("schedule.step_size", lambda v: v >= 1, "an integer >= 1"),
    ("schedule.gamma", lambda v: 0 < v <= 1, "a number in (0, 1]"),
    ("train.steps", lambda v: v >= 1, "an integer >= 1"),
    ("train.batch_size", lambda v: v >= 1, "an integer >= 1"),
    ("train.eval_every", lambda v: v >= 1, "an integer >= 1"),
    ("train.checkpoint_every", lambda v: v >= 0, "an integer >= 0 (0: checkpoint only when interrupted)"),
    ("train.threads", lambda v: v is None or v >= 1, "an integer >= 1, or null for the launcher's share / torch's default"),
    ("log.every", lambda v: v >= 1, "an integer >= 1"),
    ("reg.l1", lambda v: 0 <= v < math.inf, "a finite number >= 0"),
    ("reg.l2", lambda v: 0 <= v < math.inf, "a finite number >= 0"),
    ("seed", lambda v: 0 <= v <= MAX_SEED, f"an integer in [0, {MAX_SEED}]"),
    ("diagnose.vanishing_gain", lambda v: 0 < v < 1, "a number in (0, 1)"),
    ("diagnose.exploding_gain", lambda v: v > 1, "a number > 1"),
    ("diagnose.vanishing_ratio", lambda v: 0 < v < 1, "a number in (0, 1)"),
    ("diagnose.exploding_ratio", lambda v: v > 1, "a number > 1"),
    ("diagnose.time_vanishing_gain", lambda v: 0 < v < 1, "a number in (0, 1)"),
    ("diagnose.time_exploding_gain", lambda v: v > 1, "a number > 1"),
]


def _choices() -> list[tuple[str, tuple]]:
    from gradexp.data import TASK_NAMES

    return [
        ("activation.name", ACTIVATIONS), ("init.scheme", INIT_SCHEMES), ("norm.name", NORMS),
        ("optimizer.name", OPTIMIZERS), ("clip.mode", CLIP_MODES), ("schedule.name", SCHEDULES),
        ("data.name", TASK_NAMES), ("device", DEVICES),
    ]


def _get(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def validate(cfg: Any) -> None:
    """Raise ConfigError for the first value the experiment cannot run with."""
    _check_resolvable(cfg)
    unknown = sorted(set(_leaves(cfg)) - set(schema_keys()))
    if unknown:
        raise ConfigError(unknown[0], _get(cfg, unknown[0]), "a key of the schema (gradexp run --help lists them)")
    if cfg.model._target_ not in MODEL_TARGETS:
        raise ConfigError("model._target_", cfg.model._target_, " | ".join(MODEL_TARGETS))
    for key, allowed in _choices():
        if _get(cfg, key) not in allowed:
            raise ConfigError(key, _get(cfg, key), " | ".join(allowed))
    if cfg.init.recurrent is not None and cfg.init.recurrent not in INIT_SCHEMES:
        raise ConfigError("init.recurrent", cfg.init.recurrent, "null | " + " | ".join(INIT_SCHEMES))
    for key, ok, allowed in _RANGES:
        if not ok(_get(cfg, key)):
            raise ConfigError(key, _get(cfg, key), allowed)
    _check_intervals(cfg)
    _check_combinations(cfg)


def schema_keys(node: Any = Config, prefix: str = "") -> list[str]:
    """Every leaf key of the schema: ['model._target_', 'model.depth', ..., 'resume']."""
    keys: list[str] = []
    for f in fields(node):
        kind = f.default_factory if is_dataclass(f.default_factory) else None  # type: ignore[misc]
        keys += schema_keys(kind, f"{prefix}{f.name}.") if kind else [f"{prefix}{f.name}"]
    return keys


def _leaves(cfg: Any, prefix: str = "") -> list[str]:
    from omegaconf import DictConfig

    out: list[str] = []
    for key in cfg.keys():
        value = cfg._get_node(key)
        out += _leaves(value, f"{prefix}{key}.") if isinstance(value, DictConfig) else [f"{prefix}{key}"]
    return out


def _check_resolvable(cfg: Any) -> None:
    """An interpolation that does not resolve to an allowed type (or at all) is bad input, not a crash."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "config"
        raise ConfigError(key, _raw(cfg, key), f"a value of the key's type ({str(err).splitlines()[0]})") from None


def _raw(cfg: Any, key: str) -> Any:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(OmegaConf.select(cfg, key.rsplit(".", 1)[0]) if "." in key else cfg,
                                      resolve=False).get(key.rsplit(".", 1)[-1])
    except Exception:  # the value itself is what cannot be read; the message still names the key
        return None


def _bool_keys(node: Any = Config, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for f in fields(node):
        if is_dataclass(f.default_factory):  # type: ignore[misc]
            out |= _bool_keys(f.default_factory, f"{prefix}{f.name}.")  # type: ignore[misc]
        elif f.type in (bool, "bool"):
            out.add(f"{prefix}{f.name}")
    return out


def check_overrides(overrides: list[str]) -> None:
    """What composition cannot see once it has converted a value: a boolean given as a number (2 becomes true)
    and an interpolation that reads the environment."""
    bools = _bool_keys()
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if any(f"${{{name}:" in value for name in ENV_RESOLVERS):
            raise ConfigError(key, value, "a literal value (the environment is not recorded with the run)")
        if key in bools and value.strip().lower() not in ("true", "false"):
            raise ConfigError(key, value, "true | false")


def _check_intervals(cfg: Any) -> None:
    """Instruments on their own interval run only on logging steps, so the interval is a multiple of log.every."""
    for key in ("log.histograms_every", "log.bptt_every"):
        value = _get(cfg, key)
        if value < 0 or value % cfg.log.every:
            raise ConfigError(key, value, f"0 (off) or a multiple of log.every={cfg.log.every}")


def _check_combinations(cfg: Any) -> None:
    from gradexp.data import MIN_SEQ_LEN, SEQUENCE_TASKS

    family, task = model_family(cfg), cfg.data.name
    if family in RECURRENT and task not in SEQUENCE_TASKS:
        raise ConfigError("data", task, f"a sequence task for model={family}: " + " | ".join(SEQUENCE_TASKS))
    if family not in RECURRENT and task in SEQUENCE_TASKS:
        raise ConfigError("data", task, f"a non-sequence task for model={family} (sequence tasks need model=rnn|lstm|gru)")
    if family == "cnn" and task != "digits":
        raise ConfigError("data", task, "digits for model=cnn (it needs images)")
    if family in RECURRENT and cfg.model.residual:
        raise ConfigError("model.residual", True, f"false for model={family} (residual applies to mlp and cnn)")
    if cfg.norm.name == "batchnorm" and cfg.train.batch_size < 2:
        raise ConfigError("train.batch_size", cfg.train.batch_size, ">= 2 with norm=batchnorm")
    if cfg.data.seq_len is not None:
        _check_seq_len(task, cfg.data.seq_len, MIN_SEQ_LEN)
    if cfg.optimizer.name == "adagrad" and cfg.optimizer.momentum != 0:
        raise ConfigError("optimizer.momentum", cfg.optimizer.momentum, "0 for optimizer=adagrad (it has no momentum)")
    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("device", "cuda", "auto | cpu (no CUDA device is available here)")


def _check_seq_len(task: str, seq_len: int, minimum: dict[str, int]) -> None:
    if task not in minimum:
        raise ConfigError("data.seq_len", seq_len, f"null for data={task} (its length is fixed)")
    if seq_len < minimum[task]:
        raise ConfigError("data.seq_len", seq_len, f"an integer >= {minimum[task]} for data={task}")
