"""The one run factory: the only place that turns a composed config into objects. The CLI, resume, the
benchmarks and the tests all get their Run from `run(cfg, sinks)`."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import torch
from hydra.utils import instantiate
from torch import nn

from gradexp.clip import ClipPolicy
from gradexp.data import Batches, Task, make_task
from gradexp.data_loader import Loader
from gradexp.models import init_weights
from gradexp.config import model_family
from gradexp.probes.act_grads import ActGrads
from gradexp.probes.act_stats import ActStats
from gradexp.probes.base import Instruments, Probe
from gradexp.probes.bptt import BpttGradNorms
from gradexp.probes.clip_telemetry import ClipTelemetry
from gradexp.probes.grad_norms import GradNorms
from gradexp.probes.histograms import Histograms
from gradexp.probes.update_ratio import UpdateRatio
from gradexp.registry import DATA, MODELS, OPTIMIZERS, SCHEDULES, resolve
from gradexp.train import Run, Settings


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


def model(cfg: Any, task_: Task, dev: torch.device) -> nn.Module:
    torch.manual_seed(cfg.seed)  # same seed, same initial weights
    net = instantiate(
        cfg.model, input_shape=tuple(task_.input_shape), num_outputs=task_.num_outputs,
        activation=cfg.activation.name, norm=cfg.norm.name, readout_steps=task_.readout_steps,
    )
    init_weights(net, scheme=cfg.init.scheme, gain=cfg.init.gain, std=cfg.init.std,
                 activation=cfg.activation.name, recurrent=cfg.init.recurrent,
                 recurrent_gain=cfg.init.recurrent_gain)
    return net.to(dev)


def optimizer(cfg: Any, params) -> torch.optim.Optimizer:
    """The registry's class with lr and the keys this optimizer takes (validation refused any other key set)."""
    o = cfg.optimizer
    entry = OPTIMIZERS[o.name]
    kwargs = {key: getattr(o, key) for key in entry.keys if getattr(o, key) is not None}
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    return resolve(entry.target)(params, lr=o.lr, **kwargs)


def scheduler(cfg: Any, opt: torch.optim.Optimizer) -> Optional[torch.optim.lr_scheduler.LRScheduler]:
    return SCHEDULES[cfg.schedule.name].build(opt, cfg.schedule, cfg.train.steps)


def clip(cfg: Any) -> ClipPolicy:
    c = cfg.clip
    return ClipPolicy(mode=c.mode, max_norm=c.max_norm, norm_type=c.norm_type, value=c.value)


def probes(cfg: Any, clip_policy: Optional[ClipPolicy] = None) -> list[Probe]:
    found: list[Probe] = [GradNorms(), ActGrads(), ActStats(cfg.activation.name), UpdateRatio()]
    if clip_policy is not None and clip_policy.mode != "none":
        found.append(ClipTelemetry(clip_policy))
    if cfg.log.histograms_every:
        found.append(Histograms(cfg.log.histograms_every))
    if MODELS[model_family(cfg)].recurrent and cfg.log.bptt_every:
        found.append(BpttGradNorms(cfg.log.bptt_every, last_step=cfg.train.steps - 1))
    return found


def batches(cfg: Any, task_: Task, dev: Optional[torch.device] = None) -> Batches | Loader:
    """The train batch stream; both kinds give the same batches for the same seed (before augmentation)."""
    if not uses_loader(cfg):
        return Batches(task_.x_train, task_.y_train, batch_size=cfg.train.batch_size, seed=cfg.seed + 1)
    return Loader(task_.x_train, task_.y_train, batch_size=cfg.train.batch_size, seed=cfg.seed + 1,
                  workers=cfg.data.workers, augment=cfg.data.augment, device=dev or task_.x_val.device)


def settings(cfg: Any) -> Settings:
    t = cfg.train
    return Settings(steps=t.steps, eval_every=t.eval_every, log_every=cfg.log.every, l1=cfg.reg.l1, l2=cfg.reg.l2,
                    stop_on_nonfinite=t.stop_on_nonfinite)


def run(cfg: Any, sinks: Sequence = ()) -> Run:
    """Everything one experiment trains with, built in order: device, task, model (seeded init), optimizer,
    schedule, clip policy, the probes watching the model, and the batch stream."""
    dev = device(cfg)
    task_ = task(cfg, dev)
    net = model(cfg, task_, dev)
    opt = optimizer(cfg, net.parameters())
    policy = clip(cfg)
    return Run(model=net, task=task_, batches=batches(cfg, task_, dev), optimizer=opt, scheduler=scheduler(cfg, opt),
               clip=policy, instruments=Instruments(probes(cfg, policy), net), sinks=list(sinks))
