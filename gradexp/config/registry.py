"""One registry per option kind: the single source of every fact about an option.

Validation (config.py), the model factories (models/layers.py), the probes (saturation rule), analysis
(advice hints, mean-field theory), the run factory and the tests' parametrization all read these tables.
The config-group folder holds one tiny YAML per option that only names it and its own keys
(tests/test_registry.py checks that the two agree). Adding an activation is one entry in ACTIVATIONS plus
configs/activation/NAME.yaml.

Torch objects are named by dotted path and resolved when built (`resolve`), so importing the registry does
not import torch: `gradexp run --help` stays fast."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional

LEAKY_SLOPE = 0.01


def resolve(dotted: str) -> Any:
    """'torch.nn.ReLU' -> the object it names."""
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def check_name(kind: str, name: str, allowed: Iterable[str]) -> None:
    """Raise ValueError naming the allowed values when `name` is not one of them (for callers from Python;
    the CLI's config checks give the same list as a one-line ConfigError)."""
    allowed = tuple(allowed)
    if name not in allowed:
        raise ValueError(f"unknown {kind} {name!r}; allowed: {', '.join(allowed)}")


# --- activation ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Activation:
    target: str                     # torch.nn module class
    kaiming: str                    # nonlinearity for torch.nn.init.calculate_gain (kaiming_* schemes)
    saturation: str                 # "squashing": flat tails | "dead_units": zero/negative region | "none"
    matched_init: str               # advice: the init that keeps gradient scale through this activation
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    # squashing only: y = phi(z) -> phi'(z) / max phi', written in the output (probes/act_stats.py)
    output_derivative: Optional[Callable[[Any], Any]] = None
    negative_slope: Optional[float] = None  # piecewise linear: slope for z < 0 (exact mean-field moments)

    def build(self) -> Any:
        return resolve(self.target)(**self.kwargs)


ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation("torch.nn.ReLU", "relu", "dead_units", "kaiming_normal", negative_slope=0.0),
    "leaky_relu": Activation("torch.nn.LeakyReLU", "leaky_relu", "dead_units", "kaiming_normal",
                             kwargs={"negative_slope": LEAKY_SLOPE}, negative_slope=LEAKY_SLOPE),
    # torch has no gain for elu / gelu / mish: ReLU-like for z > 0, so "relu"
    "elu": Activation("torch.nn.ELU", "relu", "dead_units", "kaiming_normal"),
    "selu": Activation("torch.nn.SELU", "selu", "dead_units", "kaiming_normal"),
    "gelu": Activation("torch.nn.GELU", "relu", "dead_units", "kaiming_normal"),
    "mish": Activation("torch.nn.Mish", "relu", "dead_units", "kaiming_normal"),
    "tanh": Activation("torch.nn.Tanh", "tanh", "squashing", "xavier_normal", output_derivative=lambda y: 1 - y * y),
    "sigmoid": Activation("torch.nn.Sigmoid", "sigmoid", "squashing", "xavier_normal",
                          output_derivative=lambda y: y * (1 - y) / 0.25),
    # softsign: tanh-like but flatter near 0; torch has no gain, "linear" is gain 1
    "softsign": Activation("torch.nn.Softsign", "linear", "squashing", "xavier_normal",
                           output_derivative=lambda y: (1 - y.abs()) ** 2),
    "identity": Activation("torch.nn.Identity", "linear", "none", "xavier_normal", negative_slope=1.0),
}

# --- init ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Init:
    """`apply(w, gain, std, kaiming_nonlinearity)` fills one weight matrix in place; `variance(fan_in, fan_out,
    gain, std, kaiming_gain)` is Var(W) as the scheme draws it (mean-field theory). `default` keeps PyTorch's own
    values, so it has neither."""
    apply: Optional[Callable[..., None]]
    variance: Optional[Callable[[int, int, float, float, float], float]]


def _torch_init(name: str, **fixed: Any) -> Callable[..., None]:
    def apply(w: Any, gain: float, std: float, nonlinearity: str) -> None:
        fn = resolve(f"torch.nn.init.{name}_")
        if name.startswith("kaiming"):
            a = LEAKY_SLOPE if nonlinearity == "leaky_relu" else 0.0
            fn(w, a=a, mode="fan_in", nonlinearity=nonlinearity)
            w.mul_(gain)  # init.gain scales on top of the activation's own gain
        elif name == "normal":
            fn(w, mean=0.0, std=std * gain)
        else:
            fn(w, gain=gain)
    return apply


INITS: dict[str, Init] = {
    "default": Init(None, None),
    "xavier_uniform": Init(_torch_init("xavier_uniform"), lambda i, o, g, s, k: g**2 * 2.0 / (i + o)),
    "xavier_normal": Init(_torch_init("xavier_normal"), lambda i, o, g, s, k: g**2 * 2.0 / (i + o)),
    "kaiming_uniform": Init(_torch_init("kaiming_uniform"), lambda i, o, g, s, k: (k * g) ** 2 / i),
    "kaiming_normal": Init(_torch_init("kaiming_normal"), lambda i, o, g, s, k: (k * g) ** 2 / i),
    # orthonormal rows (or columns): every entry has variance 1/max(fan_in, fan_out)
    "orthogonal": Init(_torch_init("orthogonal"), lambda i, o, g, s, k: g**2 / max(i, o)),
    "normal": Init(_torch_init("normal"), lambda i, o, g, s, k: (s * g) ** 2),
}


# --- norm ---------------------------------------------------------------------------------------------------

def _module(target: str, *args: Any) -> Callable[[int], Any]:
    return lambda width: resolve(target)(*args, width)


@dataclass(frozen=True)
class Norm:
    """width -> module, per layout of the hidden activations: vector (B, H), image (B, C, H, W), sequence (B, T, H).
    None: no norm (an identity)."""
    vector: Optional[Callable[[int], Any]]
    image: Optional[Callable[[int], Any]]
    sequence: Optional[Callable[[int], Any]]


NORMS: dict[str, Norm] = {
    "none": Norm(None, None, None),
    "batchnorm": Norm(_module("torch.nn.BatchNorm1d"), _module("torch.nn.BatchNorm2d"),
                      _module("gradexp.models.layers.SequenceBatchNorm")),  # statistics pool batch and time
    # GroupNorm with one group normalises each example over (C, H, W): layer norm for conv maps
    "layernorm": Norm(_module("torch.nn.LayerNorm"), _module("torch.nn.GroupNorm", 1), _module("torch.nn.LayerNorm")),
}


# --- optimizer ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Optimizer:
    target: str                 # torch.optim class
    keys: tuple[str, ...]       # the optimizer.* keys it takes besides lr; any other key set is refused


OPTIMIZERS: dict[str, Optimizer] = {
    "sgd": Optimizer("torch.optim.SGD", ("momentum", "weight_decay")),
    "adam": Optimizer("torch.optim.Adam", ("betas", "weight_decay")),
    "adamw": Optimizer("torch.optim.AdamW", ("betas", "weight_decay")),
    "rmsprop": Optimizer("torch.optim.RMSprop", ("momentum", "weight_decay")),
    "adagrad": Optimizer("torch.optim.Adagrad", ("weight_decay",)),
}
OPTIMIZER_KEYS = ("momentum", "betas", "weight_decay")  # every optional optimizer.* key


# --- schedule -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Schedule:
    """(optimizer, schedule config, total steps) -> torch LR scheduler, or None for a constant rate."""
    build: Callable[[Any, Any, int], Any]


SCHEDULES: dict[str, Schedule] = {
    "none": Schedule(lambda opt, s, steps: None),
    "step": Schedule(lambda opt, s, steps: resolve("torch.optim.lr_scheduler.StepLR")(opt, step_size=s.step_size, gamma=s.gamma)),
    "cosine": Schedule(lambda opt, s, steps: resolve("torch.optim.lr_scheduler.CosineAnnealingLR")(opt, T_max=steps)),
}


def warmup(opt: Any, warmup_steps: int) -> Any:
    """schedule.warmup_steps = W: update s runs at (s+1)/W of the rate for s < W, then at the full rate. Torch's
    LinearLR from 1/W to 1 over W-1 scheduler steps; it multiplies whatever the schedule sets, so it composes with
    every schedule (training/factory.py chains the two)."""
    return resolve("torch.optim.lr_scheduler.LinearLR")(opt, start_factor=1.0 / warmup_steps, end_factor=1.0,
                                                       total_iters=warmup_steps - 1)


# --- clip ---------------------------------------------------------------------------------------------------

CLIP_MODES: dict[str, tuple[str, ...]] = {  # mode -> the clip.* keys it reads
    "none": (),
    "norm": ("max_norm", "norm_type"),
    "value": ("value",),
}


# --- data ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Data:
    target: str                     # (seed, n_train, n_val, seq_len, **keys) -> Task, in gradexp/data/
    input: str                      # "vector" | "image" | "sequence": which model families can take it
    n_train: Optional[int]          # defaults; n_train None = every example left after the val split
    n_val: Optional[int]            # None: the task's own share (a tenth of the user's data)
    seq_len: Optional[int] = None   # None: not a key of this task (its length is fixed or absent)
    min_seq_len: int = 1
    keys: tuple[str, ...] = ()      # the other data.* keys its builder takes; any other one set is refused
    next_token: bool = False        # the target at position t is the input at t+1: a model must not look ahead


_DOWNLOADED = ("root", "url", "download_timeout")  # published datasets fetched once into data.root


DATA: dict[str, Data] = {
    "blobs": Data("gradexp.data.tasks.blobs", "vector", 4000, 1000),
    "digits": Data("gradexp.data.tasks.digits", "image", None, 360),
    "adding": Data("gradexp.data.tasks.adding", "sequence", 8000, 1000, seq_len=50, min_seq_len=2),
    "copy": Data("gradexp.data.tasks.copy", "sequence", 8000, 1000, seq_len=20, min_seq_len=1),
    "seq_digits": Data("gradexp.data.tasks.seq_digits", "sequence", None, 360),
    "mnist": Data("gradexp.data.images.mnist", "image", None, 10000, keys=_DOWNLOADED),
    "fashion_mnist": Data("gradexp.data.images.fashion_mnist", "image", None, 10000, keys=_DOWNLOADED),
    "cifar10": Data("gradexp.data.images.cifar10", "image", None, 10000, keys=_DOWNLOADED),
    "image_folder": Data("gradexp.data.folder.image_folder", "image", None, None, keys=("root", "image_size")),
    "text": Data("gradexp.data.text.text", "sequence", None, None, seq_len=64, min_seq_len=1, keys=("path",),
                 next_token=True),
    # associative recall: seq_len key-value pairs, then a query key; the answer is its value (data/recall.py)
    "recall": Data("gradexp.data.recall.recall", "sequence", 8000, 1000, seq_len=8, min_seq_len=1),
}
DATA_KEYS = ("root", "url", "download_timeout", "path", "image_size")  # every optional data.* key of Data.keys


# --- model family -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Model:
    target: str                     # the nn.Module class (model._target_)
    inputs: tuple[str, ...]         # Data.input kinds it takes ("vector" takes any shape: it flattens)
    recurrent: bool = False         # has gradients through time (the bptt probe)
    residual: bool = False          # model.residual applies
    mean_field: bool = False        # analysis/theory.py predicts its gradient flow at init (plain, un-normed)
    advice_norm: str = "layernorm"  # the norm option advice suggests for this family's hidden layers
    compiles: bool = True           # train.compile: one graph without breaks (dynamo breaks on nn.RNN/LSTM/GRU)
    keys: tuple[str, ...] = ()      # the family's own model.* keys (MODEL_KEYS); any other one set is refused


MODELS: dict[str, Model] = {
    "mlp": Model("gradexp.models.mlp.MLP", ("vector", "image"), residual=True, mean_field=True, advice_norm="batchnorm"),
    "cnn": Model("gradexp.models.cnn.CNN", ("image",), residual=True, advice_norm="batchnorm"),
    "resnet": Model("gradexp.models.resnet.ResNet", ("image",), residual=True, advice_norm="batchnorm"),
    "rnn": Model("gradexp.models.rnn.RNN", ("sequence",), recurrent=True, compiles=False),
    "lstm": Model("gradexp.models.rnn.LSTM", ("sequence",), recurrent=True, compiles=False),
    "gru": Model("gradexp.models.rnn.GRU", ("sequence",), recurrent=True, compiles=False),
    # always residual (model.residual does not apply); norm_position places the norm group's layers
    "transformer": Model("gradexp.models.transformer.Transformer", ("sequence",),
                         keys=("heads", "norm_position", "ffn_mult", "causal")),
}
MODEL_KEYS = ("heads", "norm_position", "ffn_mult", "causal")  # every optional model.* key of Model.keys
NORM_POSITIONS = ("pre", "post")  # transformer: norm before each sublayer (+ a final norm), or after the residual add


def model_family(target: str) -> Optional[str]:
    """'gradexp.models.rnn.LSTM' -> 'lstm'; None for a class that is not one of gradexp's families."""
    return next((name for name, m in MODELS.items() if m.target == target), None)


DEVICES = ("auto", "cpu", "cuda")


# --- probe --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProbeKind:
    """A probe class (in gradexp/probes/) with a `from_context(ProbeContext)` classmethod that returns the probe, or
    None where it does not apply (no clip policy, no recurrent layer); `every` is its default interval in
    steps (log.probes.<name>), an interpolation of the log.* key that sets it."""
    target: str
    every: str = "${log.every}"


PROBES: dict[str, ProbeKind] = {
    "grad_norm": ProbeKind("gradexp.probes.grad_norms.GradNorms"),
    "act_grad_norm": ProbeKind("gradexp.probes.act_grads.ActGrads"),
    "act_stats": ProbeKind("gradexp.probes.act_stats.ActStats"),
    "update_ratio": ProbeKind("gradexp.probes.update_ratio.UpdateRatio"),
    "clip": ProbeKind("gradexp.probes.clip_telemetry.ClipTelemetry"),
    "histograms": ProbeKind("gradexp.probes.histograms.Histograms", every="${log.histograms_every}"),
    "bptt": ProbeKind("gradexp.probes.bptt.BpttGradNorms", every="${log.bptt_every}"),
    "attn_entropy": ProbeKind("gradexp.probes.attn_entropy.AttnEntropy"),  # layers with attention only
    # mixed precision only (train.precision, train.loss_scale); each is None for a run it does not apply to
    "loss_scale": ProbeKind("gradexp.probes.loss_scale.LossScale"),
    "skipped_steps": ProbeKind("gradexp.probes.skipped_steps.SkippedSteps"),
    "underflow": ProbeKind("gradexp.probes.underflow.Underflow"),
}


# --- precision ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Precision:
    """train.precision: the dtype torch.autocast runs the forward pass in (None: no autocast, plain float32) and
    the loss scale used when train.loss_scale is null (fp16's range needs one: gradients below 2^-24 flush to 0)."""
    autocast: Optional[str]         # dotted torch dtype
    default_loss_scale: str         # "dynamic" | "none"


PRECISIONS: dict[str, Precision] = {
    "fp32": Precision(None, "none"),
    "bf16": Precision("torch.bfloat16", "none"),
    "fp16": Precision("torch.float16", "dynamic"),
}
PRECISION_ALIASES = {"32-true": "fp32", "bf16-mixed": "bf16", "16-mixed": "fp16"}  # Lightning's spellings
LOSS_SCALES = ("dynamic", "none")  # or a fixed number > 0


def precision_name(value: str) -> str:
    """'16-mixed' -> 'fp16'; a canonical name or an unknown value comes back as given."""
    return PRECISION_ALIASES.get(value, value)
