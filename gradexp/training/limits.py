"""Refusals that need the task's sizes, checked before the model is built: a batch larger than the training set,
and a model whose parameters, optimizer state and activations cannot fit the device's free memory."""
from __future__ import annotations

import math
import os
from typing import Any

import torch

from gradexp.config.registry import MODELS
from gradexp.config.schema import ConfigError, model_family
from gradexp.data.tasks import Task

BYTES_PER_VALUE = 4  # float32 parameters, gradients, optimizer state and activations
OPTIMIZER_STATES = {"sgd": 1, "adam": 2, "adamw": 2, "rmsprop": 2, "adagrad": 1}  # buffers per parameter
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
SAVED_PER_LAYER = 4  # tensors autograd keeps per hidden layer and position: pre-activation, output, norm, grad


def check_batch(cfg: Any, task: Task) -> None:
    n_train, batch = len(task.x_train), cfg.train.batch_size
    if batch > n_train:  # each batch would repeat examples: not the experiment the user asked for
        key = "train.batch_size" if cfg.data.n_train is None else "data.n_train"
        value = batch if key == "train.batch_size" else cfg.data.n_train
        raise ConfigError(key, value, f"train.batch_size <= the training examples ({batch} > {n_train} "
                                      f"for data={cfg.data.name})")


def parameter_count(cfg: Any, task: Task) -> int:
    """Exact for gradexp's families (tests compare with the built model); hidden layers plus the linear head. Other
    families are built on the meta device and counted (exact too, and no memory is used)."""
    family, depth, width = model_family(cfg), cfg.model.depth, cfg.model.width
    if family not in ("mlp", "cnn") and family not in GATES:
        return sum(p.numel() for p in _on_meta(cfg, task).parameters())
    norm = 2 * width * depth if cfg.norm.name != "none" else 0
    head = width * task.num_outputs + task.num_outputs
    if family == "mlp":
        d_in = math.prod(task.input_shape)
        return d_in * width + width + (depth - 1) * (width * width + width) + norm + head
    if family == "cnn":
        c_in = task.input_shape[0]
        return c_in * width * 9 + width + (depth - 1) * (width * width * 9 + width) + norm + head
    gates, features = GATES[family], task.input_shape[-1]
    first = gates * (features * width + width * width + 2 * width)
    return first + (depth - 1) * gates * (2 * width * width + 2 * width) + norm + head


def _on_meta(cfg: Any, task: Task) -> torch.nn.Module:
    from gradexp.training import factory as build

    with torch.device("meta"):
        return build.construct(cfg, task)


def _meta_activations(cfg: Any, task: Task) -> int:
    """Entries of every leaf module's output for one training batch, from a forward pass on the meta device (shapes
    only), times what autograd keeps per output; 0 where the model cannot run on meta (the estimate is then
    parameters and optimizer state only)."""
    net, total = _on_meta(cfg, task), [0]

    def count(module: Any, inputs: Any, output: Any) -> None:
        total[0] += output.numel() if isinstance(output, torch.Tensor) else 0

    handles = [m.register_forward_hook(count) for m in net.modules() if not list(m.children())]
    try:
        net(task.inputs(torch.zeros(cfg.train.batch_size, *task.x_train.shape[1:], device="meta",
                                    dtype=task.x_train.dtype)))
    except Exception:  # an op without a meta kernel: no activation estimate rather than a crash
        return 0
    finally:
        for handle in handles:
            handle.remove()
    return total[0] * 2  # each output and its gradient


def _attention_values(cfg: Any, task: Task) -> int:
    """A transformer's attention weights (B, heads, T, T) per block: no module outputs them, so the meta pass does
    not count them; a logging step keeps the scores and the softmax of every block for backward."""
    if "heads" not in MODELS[model_family(cfg)].keys:
        return 0
    t, heads = task.input_shape[0], cfg.model.heads or 4
    return 2 * cfg.train.batch_size * heads * t * t * cfg.model.depth


def activation_count(cfg: Any, task: Task) -> int:
    """Values autograd saves for one training batch, or the forward pass over the validation split if larger."""
    family, width, depth = model_family(cfg), cfg.model.width, cfg.model.depth
    if family not in ("mlp", "cnn") and family not in GATES:
        return _meta_activations(cfg, task) + _attention_values(cfg, task)
    positions = math.prod(task.input_shape[1:]) if family == "cnn" else 1
    if MODELS[family].recurrent:
        positions = task.input_shape[0] * GATES[family]  # time steps, one pre-activation per gate
    train = cfg.train.batch_size * width * positions * depth * SAVED_PER_LAYER
    val = len(task.x_val) * width * positions * 2  # no_grad: a layer's input and output at a time
    return max(train, val)


def estimate_bytes(cfg: Any, task: Task) -> dict[str, int]:
    params = parameter_count(cfg, task)
    return {
        "parameters and gradients": 2 * params * BYTES_PER_VALUE,
        "optimizer state": OPTIMIZER_STATES[cfg.optimizer.name] * params * BYTES_PER_VALUE,
        "activations": activation_count(cfg, task) * BYTES_PER_VALUE,
    }


def available_bytes(dev: torch.device) -> int:
    if dev.type == "cuda":
        return torch.cuda.mem_get_info(dev)[0]
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):  # not Linux: free physical pages
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(cfg: Any, task: Task, dev: torch.device) -> None:
    if model_family(cfg) not in MODELS:  # the user's own class: its size is its own, not estimable from the keys
        return
    parts = estimate_bytes(cfg, task)
    need, limit = sum(parts.values()), available_bytes(dev)
    if need <= limit:
        return
    key = "model.width" if cfg.model.width >= cfg.model.depth else "model.depth"
    detail = ", ".join(f"{name} {_gb(size)}" for name, size in parts.items())
    raise ConfigError(key, cfg.model[key.split(".")[1]],
                      f"a model that fits {dev.type} memory: this one needs about {_gb(need)} ({detail}); "
                      f"{_gb(limit)} is free")


def _gb(size: int) -> str:
    return f"{size / 1e9:.3g} GB"


def task(cfg: Any, dev: torch.device) -> Task:
    """The task, with sizes it cannot give (the digits have 1797 examples) as bad input rather than a crash."""
    from gradexp.training import factory as build

    try:
        built = build.task(cfg, dev)
    except ConfigError:  # the data's own one-line refusals (no such folder, no network) name their key
        raise
    except ValueError as err:
        raise ConfigError("data.n_val", cfg.data.n_val, f"a size data={cfg.data.name} can give ({err})") from None
    check_batch(cfg, built)
    check_memory(cfg, built, dev)
    return built
