"""Structured-config schema (typed dataclasses) and the value checks that run before any training.

The schema makes Hydra reject misspelled keys (struct mode) and wrong types at composition time;
`validate` adds ranges and cross-field rules and raises ConfigError, which the CLI prints as one line.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Optional, Sequence

from hydra.core.config_store import ConfigStore

from gradexp.config import registry

GROUPS = ("model", "activation", "init", "norm", "optimizer", "clip", "data", "schedule", "experiment")
MAX_SEED = 2**63 - 1  # torch.manual_seed and the task generators take a signed 64-bit seed
ENV_RESOLVERS = ("oc.env", "oc.decode")  # read the environment (or parse strings into config): never recorded


@dataclass
class ModelConf:
    _target_: str = "gradexp.models.mlp.MLP"
    depth: int = 6
    width: int = 64
    residual: bool = False
    watch: list[str] = field(default_factory=list)  # fnmatch patterns of the layers to watch; [] = the model's own list
    # the keys below belong to the families whose registry entry names them (registry.MODELS[...].keys): transformer
    heads: Optional[int] = None             # attention heads; they divide width
    norm_position: Optional[str] = None     # pre | post: the norm before each sublayer, or after the residual add
    ffn_mult: Optional[int] = None          # feed-forward width = ffn_mult * width
    causal: Optional[bool] = None           # masked self-attention: position t sees positions <= t only


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
    """Which keys an optimizer takes is its registry entry; a key it does not take stays null."""
    name: str = "adam"
    lr: float = 1e-3
    momentum: Optional[float] = None        # sgd, rmsprop
    betas: Optional[list[float]] = None     # adam, adamw: (beta1, beta2)
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
    # the keys below apply to the tasks whose registry entry names them (registry.DATA[...].keys)
    # mnist/fashion_mnist/cifar10: the cache folder (null: ~/.cache/gradexp); image_folder: the images
    root: Optional[str] = None
    url: Optional[str] = None           # a mirror of the published files (null: the authors' address)
    download_timeout: float = 30.0      # seconds to connect before giving up
    path: Optional[str] = None          # text: the corpus file
    image_size: Optional[int] = None    # image_folder: images resized to this square (null: 32)
    workers: int = 0                    # DataLoader worker processes (0: batches cut in the main process)
    augment: str = "none"               # none | standard (random crop with 4-pixel padding + horizontal flip)


AUGMENTS = ("none", "standard")


@dataclass
class ScheduleConf:
    name: str = "none"
    step_size: int = 100
    gamma: float = 0.5
    warmup_steps: int = 0   # linear warmup: update s runs at (s+1)/warmup_steps of the rate while s < warmup_steps


@dataclass
class TrainConf:
    steps: int = 500
    batch_size: int = 64
    eval_every: int = 50
    stop_on_nonfinite: bool = True
    checkpoint_every: int = 100     # periodic checkpoint interval in steps; 0 = only when interrupted
    deterministic: bool = False     # torch.use_deterministic_algorithms (slower on CUDA)
    threads: Optional[int] = None   # torch CPU threads; None = the launcher's share, else torch's default
    precision: str = "fp32"         # fp32 | bf16 | fp16 (or Lightning's 32-true | bf16-mixed | 16-mixed)
    loss_scale: Any = None          # dynamic | none | a fixed number > 0; null = dynamic for fp16, none otherwise
    compile: bool = False           # ordinary steps through torch.compile; logging steps in eager
    flush_denormal: bool = False    # subnormal floats read as 0 (faster on some CPUs; norms below 1.2e-38 read 0)


@dataclass
class LogConf:
    every: int = 25
    histograms_every: int = 0   # 0 = off; else a multiple of every
    bptt_every: int = 100       # recurrent models only; 0 = off; else a multiple of every
    # probe -> its interval in steps (0 = off; a multiple of every); defaults follow the keys above
    probes: dict[str, Any] = field(default_factory=lambda: {name: p.every for name, p in registry.PROBES.items()})


@dataclass
class RegConf:
    l1: float = 0.0
    l2: float = 0.0


@dataclass
class DiagnoseConf:
    """Verdict thresholds (gradexp/analysis/diagnose.py). Gains are factors per layer (or per time step) travelled backward."""
    vanishing_gain: float = 0.8       # per-layer gain below this: vanishing
    exploding_gain: float = 1.25      # per-layer gain above this: exploding
    vanishing_ratio: float = 1e-3     # first-layer / last-layer gradient norm below this: vanishing
    exploding_ratio: float = 1e3      # ... above this: exploding
    time_vanishing_gain: float = 0.9  # recurrent models: gain per time step below this: vanishing through time
    time_exploding_gain: float = 1.1  # ... above this: exploding through time


OBJECTIVE_METRICS = ("loss/val", "acc/val", "loss/train", "acc/train")  # summary.json "final" keys
DIRECTIONS = ("minimize", "maximize")


@dataclass
class ObjectiveConf:
    """What a sweep job returns to the sweeper (hydra/sweeper=optuna): a final metric and its direction."""
    metric: str = "loss/val"
    direction: str = "minimize"


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
    objective: ObjectiveConf = field(default_factory=ObjectiveConf)
    seed: int = 0
    device: str = "auto"
    resume: Optional[str] = None    # a run folder to continue in place (gradexp/training/resume.py)


def register_schema() -> None:
    ConfigStore.instance().store(name="gradexp_schema", node=Config)


def compose(overrides: Sequence[str] = (), config_dir: Optional[str] = None) -> Any:
    """The config `gradexp run OVERRIDES` composes (Hydra's compose API), with `config_dir` searched like
    `--config-dir`. Raises Hydra's errors for unknown keys or options; `validate` checks the values."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register_schema()
    GlobalHydra.instance().clear()
    extra = [f"hydra.searchpath=[file://{os.path.abspath(config_dir)}]"] if config_dir else []
    with initialize_config_module(version_base="1.3", config_module="gradexp.configs"):
        return hydra_compose(config_name="config", overrides=[*overrides, *extra])


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, or its type where it has none: a refusal is one line."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class ConfigError(ValueError):
    """A value the experiment cannot run with; str() is the one line the user sees."""

    def __init__(self, key: str, value: Any, allowed: str):
        super().__init__(f"invalid value for {key}: {as_typed(value)} (allowed: {allowed})")
        self.key, self.value, self.allowed = key, value, allowed


def as_typed(value: Any) -> str:
    """A value as the user would type it in an override: true/false/null, not Python's True/False/None."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return repr(value)


CUSTOM = "custom"  # model=custom: the user's own nn.Module class, model._target_=pkg.module.Class


def names_users_class(override: str) -> bool:
    """Whether a command-line override names the user's own model class (model._target_ outside gradexp's models).
    Importing it runs the user's code, so a resumed run takes it from the command line, never from the run folder's
    record alone (training/resume.py), and the printed `resume with:` command repeats it."""
    key, sep, value = override.partition("=")
    return bool(sep) and key.lstrip("+~") == "model._target_" and registry.model_family(value.strip("'\"")) is None


def _path_hint(module: str, err: Exception) -> str:
    """'; it is in this folder: run with PYTHONPATH=.' where the missing module is a file or package here, which
    Python does not search for a console script (found by a new user: mynets.py beside the command)."""
    import os

    top = module.split(".")[0]
    here = os.path.isfile(f"{top}.py") or os.path.isfile(os.path.join(top, "__init__.py"))
    missing = isinstance(err, ModuleNotFoundError) and err.name == top
    return "; it is in this folder: run with PYTHONPATH=." if here and missing else ""


def model_family(cfg: Any) -> Optional[str]:
    """'gradexp.models.rnn.LSTM' -> 'lstm'; 'custom' for any other class (the user's own, model=custom)."""
    return registry.model_family(cfg.model._target_) or CUSTOM


def import_model_class(target: str) -> Any:
    """The class model._target_ names, or a one-line ConfigError: not importable, or not an nn.Module."""
    import importlib

    from torch import nn

    module, _, name = str(target).rpartition(".")
    allowed = "an importable nn.Module class, module.Class (or one of gradexp's: model=" + \
        " | ".join(registry.MODELS) + ")"
    try:
        cls = getattr(importlib.import_module(module), name) if module else None
    except Exception as err:  # ImportError, or an error the user's module raises on import
        hint = _path_hint(module, err)
        raise ConfigError("model._target_", target,
                          f"{allowed}; import failed: {type(err).__name__}: {err}{hint}") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError("model._target_", target, allowed)
    return cls


FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max, without importing torch here
_FLOAT32 = f"<= {FLOAT32_MAX:.4g}, float32's largest"  # torch computes with these in float32


# (key, test, what is allowed) — checked in order; the first failure is reported
_RANGES = [
    ("model.depth", lambda v: v >= 1, "an integer >= 1"),
    ("model.width", lambda v: v >= 1, "an integer >= 1"),
    ("init.gain", lambda v: 0 < v <= FLOAT32_MAX, f"a number > 0 and {_FLOAT32}"),
    ("init.std", lambda v: 0 < v <= FLOAT32_MAX, f"a number > 0 and {_FLOAT32}"),
    ("optimizer.lr", lambda v: 0 < v <= FLOAT32_MAX, f"a number > 0 and {_FLOAT32}"),
    ("init.recurrent_gain", lambda v: v is None or 0 < v <= FLOAT32_MAX,
     f"a number > 0 and {_FLOAT32}, or null for init.gain"),
    ("optimizer.momentum", lambda v: v is None or 0 <= v < 1, "a number in [0, 1)"),
    ("optimizer.betas", lambda v: v is None or (len(v) == 2 and all(0 <= b < 1 for b in v)), "two numbers in [0, 1), e.g. [0.9,0.999]"),
    ("optimizer.weight_decay", lambda v: 0 <= v <= FLOAT32_MAX, f"a number >= 0 and {_FLOAT32}"),
    ("clip.max_norm", lambda v: 0 < v <= FLOAT32_MAX, f"a number > 0 and {_FLOAT32}"),
    ("clip.norm_type", lambda v: v > 0, "a number > 0 (inf for the max norm)"),
    ("clip.value", lambda v: 0 < v <= FLOAT32_MAX, f"a number > 0 and {_FLOAT32}"),
    ("data.n_train", lambda v: v is None or v >= 1, "an integer >= 1, or null for the task's default"),
    ("data.n_val", lambda v: v is None or v >= 1, "an integer >= 1, or null for the task's default"),
    ("data.download_timeout", lambda v: 0 < v < math.inf, "a finite number of seconds > 0"),
    ("data.image_size", lambda v: v is None or v >= 1, "an integer >= 1, or null for 32"),
    ("data.workers", lambda v: v >= 0, "an integer >= 0 (0: no worker processes)"),
    ("schedule.step_size", lambda v: v >= 1, "an integer >= 1"),
    ("schedule.gamma", lambda v: 0 < v <= 1, "a number in (0, 1]"),
    ("schedule.warmup_steps", lambda v: v >= 0, "an integer >= 0 (0: no warmup)"),
    ("train.steps", lambda v: v >= 1, "an integer >= 1"),
    ("train.batch_size", lambda v: v >= 1, "an integer >= 1"),
    ("train.eval_every", lambda v: v >= 1, "an integer >= 1"),
    ("train.checkpoint_every", lambda v: v >= 0, "an integer >= 0 (0: checkpoint only when interrupted)"),
    ("train.threads", lambda v: v is None or v >= 1, "an integer >= 1, or null for the launcher's share / torch's default"),
    ("log.every", lambda v: v >= 1, "an integer >= 1"),
    ("reg.l1", lambda v: 0 <= v <= FLOAT32_MAX, f"a number >= 0 and {_FLOAT32}"),
    ("reg.l2", lambda v: 0 <= v <= FLOAT32_MAX, f"a number >= 0 and {_FLOAT32}"),
    ("seed", lambda v: 0 <= v <= MAX_SEED, f"an integer in [0, {MAX_SEED}]"),
    ("diagnose.vanishing_gain", lambda v: 0 < v < 1, "a number in (0, 1)"),
    ("diagnose.exploding_gain", lambda v: v > 1, "a number > 1"),
    ("diagnose.vanishing_ratio", lambda v: 0 < v < 1, "a number in (0, 1)"),
    ("diagnose.exploding_ratio", lambda v: v > 1, "a number > 1"),
    ("diagnose.time_vanishing_gain", lambda v: 0 < v < 1, "a number in (0, 1)"),
    ("diagnose.time_exploding_gain", lambda v: v > 1, "a number > 1"),
]


def _choices() -> list[tuple[str, tuple]]:
    return [
        ("activation.name", tuple(registry.ACTIVATIONS)), ("init.scheme", tuple(registry.INITS)),
        ("norm.name", tuple(registry.NORMS)), ("optimizer.name", tuple(registry.OPTIMIZERS)),
        ("clip.mode", tuple(registry.CLIP_MODES)), ("schedule.name", tuple(registry.SCHEDULES)),
        ("data.name", tuple(registry.DATA)), ("data.augment", AUGMENTS), ("device", registry.DEVICES),
        ("objective.metric", OBJECTIVE_METRICS), ("objective.direction", DIRECTIONS),
    ]


def _get(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def validate(cfg: Any) -> None:
    """Raise ConfigError for the first value the experiment cannot run with."""
    _check_resolvable(cfg)
    custom = model_family(cfg) == CUSTOM
    # the user's own class takes its own keys (+model.hidden=128): they go to its constructor
    unknown = sorted(k for k in set(_leaves(cfg)) - set(schema_keys()) if not (custom and k.startswith("model.")))
    if unknown:
        raise ConfigError(unknown[0], _get(cfg, unknown[0]), "a key of the schema (gradexp run --help lists them)")
    if custom and cfg.model._target_ == CUSTOM:  # model=custom's placeholder: the class was not given
        raise ConfigError("model._target_", "(not set)", "model=custom trains your own nn.Module: give "
                          "model._target_=mypkg.module.Class")
    if custom:
        import_model_class(cfg.model._target_)
    for key, allowed in _choices():
        if _get(cfg, key) not in allowed:
            raise ConfigError(key, _get(cfg, key), " | ".join(allowed))
    if cfg.init.recurrent is not None and cfg.init.recurrent not in registry.INITS:
        raise ConfigError("init.recurrent", cfg.init.recurrent, "null | " + " | ".join(registry.INITS))
    for key, ok, allowed in _RANGES:
        if not ok(_get(cfg, key)):
            raise ConfigError(key, _get(cfg, key), allowed)
    _check_intervals(cfg)
    _check_precision(cfg.train)
    _check_combinations(cfg)


def schema_keys(node: Any = Config, prefix: str = "") -> list[str]:
    """Every leaf key of the schema: ['model._target_', 'model.depth', ..., 'resume']."""
    keys: list[str] = []
    for f in fields(node):
        kind = f.default_factory if is_dataclass(f.default_factory) else None  # type: ignore[misc]
        keys += schema_keys(kind, f"{prefix}{f.name}.") if kind else [f"{prefix}{f.name}"]
    return keys


def is_schema_key(key: str) -> bool:
    """'model.depth' and an entry of a mapping key ('log.probes.bptt') are; 'model.dpth' is not."""
    keys = schema_keys()
    return key in keys or key.rpartition(".")[0] in keys


def _leaves(cfg: Any, schema_leaves: Optional[set[str]] = None, prefix: str = "") -> list[str]:
    """Every leaf key of a composed config; a schema key holding a mapping (log.probes) counts as one leaf."""
    from omegaconf import DictConfig

    schema_leaves = set(schema_keys()) if schema_leaves is None else schema_leaves
    out: list[str] = []
    for key in cfg.keys():
        value, full = cfg._get_node(key), f"{prefix}{key}"
        nested = isinstance(value, DictConfig) and full not in schema_leaves
        out += _leaves(value, schema_leaves, f"{full}.") if nested else [full]
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
    for name in cfg.log.probes:
        if name not in registry.PROBES:
            raise ConfigError(f"log.probes.{name}", cfg.log.probes[name], "a probe among " + " | ".join(registry.PROBES))
    family = model_family(cfg)
    # bptt applies to recurrent layers only: its default (100) refused log.every=1000 on an MLP (an adversarial test)
    through_time = family == CUSTOM or registry.MODELS[family].recurrent
    keys = ["log.histograms_every", "log.bptt_every", *(f"log.probes.{name}" for name in cfg.log.probes)]
    for key in keys:
        value = _get(cfg, key)
        applies = through_time or key not in ("log.bptt_every", "log.probes.bptt")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0 or (applies and value % cfg.log.every):
            raise ConfigError(key, value, f"0 (off) or a multiple of log.every={cfg.log.every}")


def _check_combinations(cfg: Any) -> None:
    family, task = model_family(cfg), cfg.data.name
    if family != CUSTOM:  # the user's class says itself what it takes (factory.check_output_fits)
        _check_data(family, task)
    _check_data_keys(cfg.data)
    if family != CUSTOM and cfg.model.residual and not registry.MODELS[family].residual:
        allowed = " and ".join(n for n, m in registry.MODELS.items() if m.residual)
        raise ConfigError("model.residual", True, f"false for model={family} (residual applies to {allowed})")
    if family != CUSTOM:
        _check_model_keys(cfg, family)
    if cfg.norm.name == "batchnorm" and cfg.train.batch_size < 2:
        raise ConfigError("train.batch_size", cfg.train.batch_size, ">= 2 with norm=batchnorm")
    if cfg.data.seq_len is not None:
        _check_seq_len(task, cfg.data.seq_len)
    _check_optimizer_keys(cfg.optimizer)
    _check_init_gains(cfg.init, family)
    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("device", "cuda", "auto | cpu (no CUDA device is available here)")
    _check_precision_device(cfg)
    if cfg.train.compile:
        _check_compile(cfg, family)


def _check_init_gains(init: Any, family: str) -> None:
    """A gain no weight is drawn with is refused, not silently ignored: `default` keeps PyTorch's own values, and a
    model without recurrent weights has no weight_hh for init.recurrent(_gain) (a custom model may have some)."""
    if family != CUSTOM and not registry.MODELS[family].recurrent:
        for key in ("recurrent", "recurrent_gain"):
            if init[key] is not None:
                recurrent_families = " | ".join(n for n, m in registry.MODELS.items() if m.recurrent)
                raise ConfigError(f"init.{key}", init[key], f"null for model={family}, which has no recurrent weights "
                                                            f"(it applies to {recurrent_families})")
    recurrent = init.scheme if init.recurrent is None else init.recurrent
    if init.scheme == "default" and recurrent == "default" and init.gain != InitConf.gain:
        raise ConfigError("init.gain", init.gain, f"{InitConf.gain} with init=default, which keeps PyTorch's own "
                                                  "values (a gain needs a scheme, e.g. init=xavier_normal)")
    if recurrent == "default" and init.recurrent_gain is not None:
        raise ConfigError("init.recurrent_gain", init.recurrent_gain, "null while the recurrent weights keep PyTorch's "
                                                                      "own values (set init.recurrent=orthogonal, e.g.)")


def _check_data(family: str, task: str) -> None:
    """The task's input kind must be one the model family takes (registry: Data.input, Model.inputs)."""
    takes = registry.MODELS[family].inputs
    if registry.DATA[task].input not in takes:
        fitting = [name for name, d in registry.DATA.items() if d.input in takes]
        raise ConfigError("data", task, f"a task model={family} can take: " + " | ".join(fitting))


def _check_model_keys(cfg: Any, family: str) -> None:
    """A model.* key the family does not take is refused, not silently ignored (model.heads with model=mlp); the
    transformer's own keys are checked here, before anything is built (models/transformer.py raises the same)."""
    m, takes = cfg.model, registry.MODELS[family].keys
    for key in registry.MODEL_KEYS:
        if getattr(m, key) is not None and key not in takes:
            reads = ", ".join(f"model.{k}" for k in takes) or "none of them"
            raise ConfigError(f"model.{key}", getattr(m, key), f"null for model={family} (it takes {reads})")
    if "heads" not in takes:
        return
    heads = 4 if m.heads is None else m.heads
    if heads < 1 or m.width % heads:
        divisors = " | ".join(str(d) for d in range(1, m.width + 1) if m.width % d == 0)
        raise ConfigError("model.heads", heads, f"a divisor of model.width={m.width}: {divisors}")
    if m.norm_position is not None and m.norm_position not in registry.NORM_POSITIONS:
        raise ConfigError("model.norm_position", m.norm_position, " | ".join(registry.NORM_POSITIONS))
    if m.ffn_mult is not None and m.ffn_mult < 1:
        raise ConfigError("model.ffn_mult", m.ffn_mult, "an integer >= 1")
    if m.causal and cfg.norm.name == "batchnorm":
        raise ConfigError("norm", "batchnorm", "layernorm | none with model.causal=true (batch statistics pool "
                          "every position, so a position would see later ones)")
    if not m.causal and registry.DATA[cfg.data.name].next_token:
        raise ConfigError("model.causal", m.causal, f"true for data={cfg.data.name} (each position predicts the "
                          "next token, which a position that looks ahead can read)")


def _check_data_keys(d: Any) -> None:
    """A data.* key the chosen task does not read is refused, not silently ignored (e.g. data.path with mnist)."""
    takes = registry.DATA[d.name].keys
    for key in registry.DATA_KEYS:
        if key != "download_timeout" and getattr(d, key) is not None and key not in takes:
            reads = ", ".join(f"data.{k}" for k in takes if k != "download_timeout") or "none of them"
            raise ConfigError(f"data.{key}", getattr(d, key), f"null for data={d.name} (it reads {reads})")
    if d.augment != "none" and registry.DATA[d.name].input != "image":
        raise ConfigError("data.augment", d.augment, f"none for data={d.name} (augmentation applies to image data)")


def _check_optimizer_keys(o: Any) -> None:
    """A key the chosen optimizer does not take is refused rather than silently ignored."""
    takes = registry.OPTIMIZERS[o.name].keys
    for key in registry.OPTIMIZER_KEYS:
        value = getattr(o, key)
        if value is not None and key not in takes:
            value = list(value) if key == "betas" else value
            raise ConfigError(f"optimizer.{key}", value,
                              f"null for optimizer={o.name} (it takes " + ", ".join(f"optimizer.{k}" for k in takes) + ")")


def _check_seq_len(task: str, seq_len: int) -> None:
    entry = registry.DATA[task]
    if entry.seq_len is None:
        raise ConfigError("data.seq_len", seq_len, f"null for data={task} (its length is fixed)")
    if seq_len < entry.min_seq_len:
        raise ConfigError("data.seq_len", seq_len, f"an integer >= {entry.min_seq_len} for data={task}")




def _check_precision(train: Any) -> None:
    names = (*registry.PRECISIONS, *registry.PRECISION_ALIASES)
    if registry.precision_name(train.precision) not in registry.PRECISIONS:
        raise ConfigError("train.precision", train.precision, " | ".join(names))
    scale = train.loss_scale
    number = isinstance(scale, (int, float)) and not isinstance(scale, bool)
    if not (scale is None or scale in registry.LOSS_SCALES or (number and 0 < scale <= FLOAT32_MAX)):
        # GradScaler keeps the scale as a float32 tensor: a larger one fails inside torch
        raise ConfigError("train.loss_scale", scale, f"dynamic | none | a number > 0 and <= {FLOAT32_MAX:.7g} (float32's "
                          "largest) | null (dynamic for fp16)")


def _check_precision_device(cfg: Any) -> None:
    """A mixed precision the device (or this torch build) cannot autocast to is refused before training."""
    name = registry.precision_name(cfg.train.precision)
    if name == "fp32":
        return
    import torch

    kind = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    dtype = registry.resolve(registry.PRECISIONS[name].autocast)
    try:
        with torch.autocast(kind, dtype=dtype):
            torch.ones(2, 2, device=kind) @ torch.ones(2, 2, device=kind)
    except (RuntimeError, AssertionError) as err:  # torch refuses the dtype on this device (or warns and is off)
        raise ConfigError("train.precision", cfg.train.precision, f"fp32 on {kind} here ({str(err).splitlines()[0]})") from None
    if kind == "cuda" and name == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.precision", cfg.train.precision, "fp32 | fp16 (this GPU has no bfloat16)")


def _check_compile(cfg: Any, family: str) -> None:
    """torch.compile needs a model dynamo takes in one graph and a compiler toolchain (a C++ compiler for
    inductor on CPU, triton on CUDA); without either the run is refused before it starts."""
    if family != CUSTOM and not registry.MODELS[family].compiles:  # a user's model: compiled as torch.compile can
        fitting = " | ".join(n for n, m in registry.MODELS.items() if m.compiles)
        raise ConfigError("train.compile", True, f"false for model={family} (torch.compile takes model={fitting})")
    import torch

    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    try:
        if cuda:
            from torch.utils._triton import has_triton

            if not has_triton():
                raise RuntimeError("triton is not installed")
        else:
            from torch._inductor.cpp_builder import get_cpp_compiler

            get_cpp_compiler()
    except Exception as err:  # whatever the toolchain probe raises, the answer is the same: no compiler here
        raise ConfigError("train.compile", True,
                          f"false here: torch.compile's compiler toolchain is missing ({first_line(err)})") from None
