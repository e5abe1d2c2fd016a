"""The one run factory: the only place that turns a composed config into objects. The CLI, resume, the
benchmarks and the tests all get their Run from `run(cfg, sinks)`."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import inspect

import torch
from hydra.utils import instantiate
from torch import nn

from gradexp.training.clip import ClipPolicy
from gradexp.data.tasks import Batches, Task, make_task
from gradexp.models import init_weights
from gradexp.probes.base import Instruments, ProbeContext
from gradexp.probes.layers import Layers, watched_layers
from gradexp.config.registry import MODEL_KEYS, OPTIMIZERS, PRECISIONS, PROBES, SCHEDULES, resolve, warmup
from gradexp.config.schema import CUSTOM, ConfigError, first_line, import_model_class, is_schema_key, model_family
from gradexp.training.loop import Run, Settings
from gradexp.data.loader import Loader
from gradexp.config.registry import DATA
from gradexp.training.precision import Precision


def device(cfg: Any) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def task(cfg: Any, dev: torch.device) -> Task:
    data = cfg.data
    options = {k: getattr(data, k) for k in DATA[data.name].keys if getattr(data, k) is not None}
    built = make_task(data.name, seed=cfg.seed, n_train=data.n_train, n_val=data.n_val, seq_len=data.seq_len,
                      **options)
    if not uses_loader(cfg):
        return built.to(dev)
    # the DataLoader cuts train batches from host memory and copies each one over; only val lives on the device
    return dataclasses.replace(built, x_val=built.x_val.to(dev), y_val=built.y_val.to(dev))


def uses_loader(cfg: Any) -> bool:
    """Worker processes or augmentation need the DataLoader pipeline; else batches are cut where the data lies."""
    return cfg.data.workers > 0 or cfg.data.augment != "none"


def construct(cfg: Any, task_: Task) -> nn.Module:
    """The configured class with the task's shapes, as its constructor made it (under torch.device("meta") it costs
    no memory: training/limits.py sizes models that way)."""
    # model.watch is for the probes, not the class; a family's own keys left null take the constructor's defaults
    constructor = {k: v for k, v in cfg.model.items() if k != "watch" and not (k in MODEL_KEYS and v is None)}
    return instantiate(
        constructor, input_shape=tuple(task_.input_shape), num_outputs=task_.num_outputs,
        activation=cfg.activation.name, norm=cfg.norm.name, readout_steps=task_.readout_steps,
    )


def model(cfg: Any, task_: Task, dev: torch.device) -> nn.Module:
    torch.manual_seed(cfg.seed)  # same seed, same initial weights
    if model_family(cfg) == CUSTOM:
        return custom_model(cfg, task_).to(dev)
    net = construct(cfg, task_)
    init_weights(net, scheme=cfg.init.scheme, gain=cfg.init.gain, std=cfg.init.std,
                 activation=cfg.activation.name, recurrent=cfg.init.recurrent,
                 recurrent_gain=cfg.init.recurrent_gain)
    return net.to(dev)


# what gradexp hands the user's class when its constructor takes it (by name, or through **kwargs)
def _offered(cfg: Any, task_: Task) -> dict[str, Any]:
    return {"input_shape": tuple(task_.input_shape), "num_outputs": task_.num_outputs,
            "activation": cfg.activation.name, "norm": cfg.norm.name, "readout_steps": task_.readout_steps,
            "depth": cfg.model.depth, "width": cfg.model.width, "residual": cfg.model.residual,
            **{k: cfg.model[k] for k in MODEL_KEYS if cfg.model[k] is not None}}


def custom_model(cfg: Any, task_: Task) -> nn.Module:
    """model=custom: the user's class with its own keys (+model.hidden=128) and, where its constructor accepts them,
    gradexp's (input_shape, num_outputs, ...); the init group applies when it is not `default`. One forward pass of
    two training examples checks that the output fits the task, so a misfit is refused in one line, not mid-run."""
    cls = import_model_class(cfg.model._target_)
    own = {k: v for k, v in cfg.model.items() if k not in ("_target_", "watch") and not is_schema_key(f"model.{k}")}
    accepted = inspect.signature(cls).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    offered = {k: v for k, v in _offered(cfg, task_).items() if takes_any or k in accepted}
    try:
        net = cls(**{**offered, **own})
    except Exception as err:
        given = "".join(f"+model.{k}={v} " for k, v in own.items())  # your keys first: the likelier culprit
        raise ConfigError("model._target_", cfg.model._target_,
                          f"a class gradexp can build with {given}{'and ' if given else ''}gradexp's "
                          f"{sorted(offered)}: {described(err)}") from None
    if cfg.init.scheme != "default":
        init_weights(net, scheme=cfg.init.scheme, gain=cfg.init.gain, std=cfg.init.std, activation=cfg.activation.name,
                     recurrent=cfg.init.recurrent, recurrent_gain=cfg.init.recurrent_gain)
    if any(True for _ in net.parameters()) and not any(p.requires_grad for p in net.parameters()):
        raise ConfigError("model._target_", cfg.model._target_, "a model with a parameter to train (every one of this "
                          "model's has requires_grad=False)")  # else backward fails at step 0 with a traceback
    check_output_fits(net, cfg, task_)
    return net


def described(err: BaseException) -> str:
    """`Type: first line of the message`, or the type alone where there is no message (a bare assert)."""
    text = first_line(err)
    return type(err).__name__ if text == type(err).__name__ else f"{type(err).__name__}: {text}"


def check_output_fits(net: nn.Module, cfg: Any, task_: Task) -> None:
    x, y = task_.inputs(task_.x_train[:2].cpu()), task_.y_train[:2].cpu()  # as the loop feeds it (one-hot tokens)
    target, data = cfg.model._target_, f"data={cfg.data.name}"
    try:
        with torch.enable_grad():  # with autograd: an output no gradient reaches the parameters through is refused
            output = net(x)
    except Exception as err:  # a shape error inside the user's forward
        raise ConfigError("model._target_", target, f"a model that takes {data}'s input {tuple(task_.input_shape)}: "
                          f"{described(err)}") from None
    shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
    misfit = f"a model whose output fits {data}: (batch, ..., {task_.num_outputs}) outputs, not {shape}"
    if not (isinstance(output, torch.Tensor) and output.dim() >= 2 and output.shape[0] == 2
            and output.shape[-1] == task_.num_outputs):
        raise ConfigError("model._target_", target, misfit)
    try:
        task_.loss(output, y)
    except Exception as err:
        raise ConfigError("model._target_", target, f"{misfit} ({described(err)})") from None
    if not output.requires_grad:  # else backward fails at step 0 with a traceback
        raise ConfigError("model._target_", target, "a model whose output depends on a parameter to train (this "
                          "one's output has no gradient: detached, or computed under torch.no_grad)")


def optimizer(cfg: Any, params) -> torch.optim.Optimizer:
    """The registry's class with lr and the keys this optimizer takes (validation refused any other key set)."""
    o = cfg.optimizer
    entry = OPTIMIZERS[o.name]
    kwargs = {key: getattr(o, key) for key in entry.keys if getattr(o, key) is not None}
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    return resolve(entry.target)(params, lr=o.lr, **kwargs)


def scheduler(cfg: Any, opt: torch.optim.Optimizer) -> Optional[torch.optim.lr_scheduler.LRScheduler]:
    """The schedule, times the linear warmup when schedule.warmup_steps > 1 (both multiply the rate: chained)."""
    base = SCHEDULES[cfg.schedule.name].build(opt, cfg.schedule, cfg.train.steps)
    if cfg.schedule.warmup_steps <= 1:  # W = 1: the first update already runs at the full rate
        return base
    ramp = warmup(opt, cfg.schedule.warmup_steps)
    return ramp if base is None else torch.optim.lr_scheduler.ChainedScheduler([ramp, base], optimizer=opt)


def clip(cfg: Any) -> ClipPolicy:
    c = cfg.clip
    return ClipPolicy(mode=c.mode, max_norm=c.max_norm, norm_type=c.norm_type, value=c.value)


def layers(cfg: Any, net: nn.Module) -> Layers:
    """The layers the instruments watch (the layer contract): model.watch patterns, else the model's own list."""
    return watched_layers(net, list(cfg.model.watch))


def precision(cfg: Any, dev: torch.device) -> Precision:
    return Precision(cfg.train.precision, cfg.train.loss_scale, dev)


def instruments(cfg: Any, net: nn.Module, watched: Layers, clip_policy: Optional[ClipPolicy] = None,
                amp: Optional[Precision] = None) -> Instruments:
    """Every probe of the registry that is on (log.probes.<name> > 0) and applies to this run, on its interval."""
    context = ProbeContext(layers=watched, activation=cfg.activation.name, clip=clip_policy, precision=amp)
    chosen = [(resolve(PROBES[name].target).from_context(context), every) for name, every in cfg.log.probes.items() if every]
    chosen = [(probe, every) for probe, every in chosen if probe is not None]
    return Instruments([p for p, _ in chosen], net, [every for _, every in chosen], last_step=cfg.train.steps - 1)


def batches(cfg: Any, task_: Task, dev: Optional[torch.device] = None) -> Batches | Loader:
    """The train batch stream; both kinds give the same batches for the same seed (before augmentation)."""
    if not uses_loader(cfg):
        return Batches(task_.x_train, task_.y_train, batch_size=cfg.train.batch_size, seed=cfg.seed + 1)
    return Loader(task_.x_train, task_.y_train, batch_size=cfg.train.batch_size, seed=cfg.seed + 1,
                  workers=cfg.data.workers, augment=cfg.data.augment, device=dev or task_.x_val.device)


def settings(cfg: Any) -> Settings:
    """The loop's plain settings (steps, intervals, regularisation) from the config."""
    t = cfg.train
    return Settings(steps=t.steps, eval_every=t.eval_every, log_every=cfg.log.every, l1=cfg.reg.l1, l2=cfg.reg.l2,
                    stop_on_nonfinite=t.stop_on_nonfinite)


def run(cfg: Any, sinks: Sequence = (), built_task: Optional[Task] = None) -> Run:
    """Everything one experiment trains with, built in order: device, task (unless given, already checked against
    the memory limits), model (seeded init), the layers to watch, optimizer, schedule, clip policy, the probes,
    and the batch stream."""
    dev = device(cfg)
    task_ = task(cfg, dev) if built_task is None else built_task
    net = model(cfg, task_, dev)
    watched = layers(cfg, net)
    opt = optimizer(cfg, net.parameters())
    policy = clip(cfg)
    amp = precision(cfg, dev)
    check_autocast(cfg, net, amp, task_)
    return Run(model=net, task=task_, batches=batches(cfg, task_, dev), optimizer=opt, scheduler=scheduler(cfg, opt),
               clip=policy, instruments=instruments(cfg, net, watched, policy, amp), sinks=list(sinks), layers=watched,
               precision=amp, compiled=compiled(cfg, net))


def check_autocast(cfg: Any, net: nn.Module, amp: Precision, task_: Task) -> None:
    """A mixed precision some layer of this model has no kernel for on this device (fp16 LSTM on CPU: oneDNN has
    none) is refused before the run, not at its first step: one forward of two examples under autocast, in eval mode
    and without autograd (no dropout drawn, no running statistics moved). The refusal lists the precisions that
    do run it."""
    if not amp.mixed:
        return
    first = next(net.parameters(), None)
    device = task_.x_train.device if first is None else first.device
    x = task_.inputs(task_.x_train[:2].to(device))  # as the loop feeds it: one-hot tokens, on the model's device
    failed = _autocast_fails(net, x, amp.device_type, amp.dtype)
    if failed is None:
        return
    runs = ["fp32"] + [name for name, entry in PRECISIONS.items() if entry.autocast and name != amp.name
                       and _autocast_fails(net, x, amp.device_type, resolve(entry.autocast)) is None]
    raise ConfigError("train.precision", cfg.train.precision,
                      f"{' | '.join(runs)} for model={model_family(cfg)} on {amp.device_type} here (autocast to "
                      f"{amp.name} fails in its forward: {failed})")


def _autocast_fails(net: nn.Module, x: torch.Tensor, device_type: str, dtype: torch.dtype) -> Optional[str]:
    """Why one forward of `x` under autocast to `dtype` fails (the first line of torch's error), or None."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad(), torch.autocast(device_type, dtype=dtype):
            net(x)
        return None
    except RuntimeError as err:
        return first_line(err)
    finally:
        net.train(was_training)


def compiled(cfg: Any, net: nn.Module) -> Optional[nn.Module]:
    """train.compile: the model through torch.compile, whole-graph for gradexp's own families (fullgraph: a graph
    break is an error, not a silent slow path); a user's model (model=custom) as torch.compile takes it by default,
    the parts dynamo cannot trace run eagerly. Compilation itself happens at the first ordinary step."""
    if not cfg.train.compile:
        return None
    return torch.compile(net, fullgraph=model_family(cfg) != CUSTOM)
