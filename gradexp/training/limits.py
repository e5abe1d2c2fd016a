"""Refusals that need the task's sizes: data whose tensors cannot fit memory, checked from the config before any
of it is generated or decoded; then, before the model is built, a batch larger than the training set and a model
whose parameters, optimizer state and activations cannot fit the device's free memory."""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Optional

import torch

from gradexp.config.registry import DATA, MODELS
from gradexp.config.schema import ConfigError, ModelConf, TrainConf, model_family
from gradexp.data import folder
from gradexp.data.tasks import BLOB_FEATURES, COPY_LENGTH, COPY_SYMBOLS, Task
from gradexp.training.memory import available_bytes

BYTES_PER_VALUE = 4  # float32 parameters, gradients, optimizer state and activations
OPTIMIZER_STATES = {"sgd": 1, "adam": 2, "adamw": 2, "rmsprop": 2, "adagrad": 1}  # buffers per parameter
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
SAVED_PER_LAYER = 4  # tensors autograd keeps per hidden layer and position: pre-activation, output, norm, grad
BUILD_PEAK = 3  # a builder's temporaries (raw draws, one-hot int64, unstandardised copies): 1.7-2.7x what it keeps
TEXT_BYTES_PER_CHAR = 8  # int64 ids; the windows x and y are views of them
# bytes one generated example keeps, from data.seq_len: float32 features, int64 labels and token ids
EXAMPLE_BYTES: dict[str, Callable[[int], int]] = {
    "blobs": lambda t: BLOB_FEATURES * 4 + 8,  # (D,) features, a label
    "adding": lambda t: t * 2 * 4 + 4,  # (T, 2) values and marks, the (1,) sum
    "copy": lambda t: (t + 2 * COPY_LENGTH) * (COPY_SYMBOLS + 2) * 4 + COPY_LENGTH * 8,  # one-hot (T + 2L, 10), (L,)
    "recall": lambda t: (2 * t + 1) * 8 + 8,  # 2n + 1 token ids, the value asked
}


def data_bytes(cfg: Any) -> tuple[int, int]:
    """Bytes the train and val tensors will keep, from the config alone (nothing generated, read or decoded); (0, 0)
    for the published datasets, whose files no key makes larger (under 1 GB), and for a root or path that is not
    there (the builder refuses it)."""
    data, entry = cfg.data, DATA[cfg.data.name]
    if data.name in EXAMPLE_BYTES:
        each = EXAMPLE_BYTES[data.name](_or(data.seq_len, entry.seq_len) or 0)
        return each * _or(data.n_train, entry.n_train), each * _or(data.n_val, entry.n_val)
    if data.name == "text" and data.path is not None and os.path.isfile(data.path):
        return TEXT_BYTES_PER_CHAR * os.path.getsize(data.path), 0  # characters <= bytes; val windows share the ids
    if data.name == "image_folder" and data.root is not None and os.path.isdir(data.root):
        images = sum(len(files) for files in folder.class_files(data.root).values())
        each = 3 * _or(data.image_size, folder.IMAGE_SIZE) ** 2 * 4 + 8  # (3, S, S) float32, a label
        n_val = _or(data.n_val, max(1, images // 10))
        return max(0, images - n_val) * each, n_val * each  # every image is decoded, whatever data.n_train keeps
    return 0, 0


def check_data(cfg: Any, dev: torch.device) -> None:
    """Host memory while the builder runs (BUILD_PEAK times what it keeps), then the device's for the splits that
    move there (only val where the DataLoader cuts train batches on the host)."""
    from gradexp.training import factory as build

    train, val = data_bytes(cfg)
    needs = [(torch.device("cpu"), BUILD_PEAK * (train + val), "while it is built")]
    if dev.type == "cuda":
        needs.append((dev, val + (0 if build.uses_loader(cfg) else train), "there"))
    for where, need, when in needs:
        limit = available_bytes(where)
        if need > limit:
            key, value = _data_culprit(cfg)
            raise ConfigError(key, value, f"data that fits {where.type} memory: data={cfg.data.name} needs about "
                                          f"{_gb(need)} {when} ({_gb(train + val)} kept); {_gb(limit)} is free")


def _data_culprit(cfg: Any) -> tuple[str, Any]:
    """A text file's size is its own; an image folder's grows with the image size squared (every image is decoded,
    whatever the split); generated data's with its count of examples and their length."""
    data, entry = cfg.data, DATA[cfg.data.name]
    if data.name == "text":
        return "data.path", data.path
    if data.name == "image_folder":
        return _culprit({"data.image_size": (data.image_size, folder.IMAGE_SIZE, 2)}, ("data.root", data.root))
    growth = {"data.n_train": (data.n_train, entry.n_train, 1), "data.n_val": (data.n_val, entry.n_val, 1),
              "data.seq_len": (data.seq_len, entry.seq_len, 1)}
    return _culprit(growth, ("data.n_train", _or(data.n_train, entry.n_train)))


def _culprit(growth: dict[str, tuple[Optional[int], Optional[int], int]], fallback: tuple[str, Any]) -> tuple[str, Any]:
    """The key that multiplied the estimate most over its default: key -> (value, default, the power the estimate
    grows with); `fallback` where no key is above its default."""
    factors = {key: power * math.log(value / default) for key, (value, default, power) in growth.items()
               if value is not None and default and value > default}
    if not factors:
        return fallback
    key = max(factors, key=factors.get)
    return key, growth[key][0]


def _or(value: Optional[int], default: Optional[int]) -> Optional[int]:
    return default if value is None else value


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


def _meta_activations(cfg: Any, task: Task) -> tuple[int, int]:
    """(every leaf module's output entries for one training batch, times what autograd keeps per output; the largest
    single output), from a forward pass on the meta device (shapes only); (0, 0) where the model cannot run on meta
    (the estimate is then parameters and optimizer state only)."""
    net, total, largest = _on_meta(cfg, task), [0], [0]

    def count(module: Any, inputs: Any, output: Any) -> None:
        n = output.numel() if isinstance(output, torch.Tensor) else 0
        total[0], largest[0] = total[0] + n, max(largest[0], n)

    handles = [m.register_forward_hook(count) for m in net.modules() if not list(m.children())]
    try:
        net(task.inputs(torch.zeros(cfg.train.batch_size, *task.x_train.shape[1:], device="meta",
                                    dtype=task.x_train.dtype)))
    except Exception:  # an op without a meta kernel: no activation estimate rather than a crash
        return 0, 0
    finally:
        for handle in handles:
            handle.remove()
    return total[0] * 2, largest[0]  # each output and its gradient


def _attention_values(cfg: Any, task: Task, examples: Optional[int] = None, blocks: Optional[int] = None) -> int:
    """A transformer's attention weights (B, heads, T, T) per block: no module outputs them, so the meta pass does
    not count them; a logging step keeps the scores and the softmax of every block for backward. `examples` and
    `blocks`: other than a training batch through every block (the no-grad validation pass: one block at a time)."""
    if "heads" not in MODELS[model_family(cfg)].keys:
        return 0
    t, heads = task.input_shape[0], cfg.model.heads or 4
    examples = cfg.train.batch_size if examples is None else examples
    return 2 * examples * heads * t * t * (cfg.model.depth if blocks is None else blocks)


def activation_count(cfg: Any, task: Task) -> int:
    """Values autograd saves for one training batch, or the forward pass over the validation split if larger."""
    return max(_passes(cfg, task))


def _passes(cfg: Any, task: Task) -> tuple[int, int]:
    """Values saved for one training batch, and those of the no-grad pass over the validation split, which evaluates
    the whole split at once; both with the one-hot inputs of token tasks."""
    train, val = _layer_passes(cfg, task)
    return train + _one_hot_values(cfg, task, False), val + _one_hot_values(cfg, task, True)


def _one_hot_values(cfg: Any, task: Task, validation: bool) -> int:
    """A token task's one-hot inputs (task.inputs: int64, two values' room each, then its float32 copy) for a
    training batch or the whole validation split; 0 for other tasks."""
    if task.vocab_size is None:
        return 0
    examples = len(task.x_val) if validation else cfg.train.batch_size
    return 3 * examples * math.prod(task.x_train.shape[1:]) * task.vocab_size


def _layer_passes(cfg: Any, task: Task) -> tuple[int, int]:
    family, width, depth = model_family(cfg), cfg.model.width, cfg.model.depth
    if family not in ("mlp", "cnn") and family not in GATES:
        saved, largest = _meta_activations(cfg, task)
        n_val = len(task.x_val)
        # no_grad over the whole split: a layer's input and output at a time, and one block's attention scores (the
        # fused kernel, no hooks in evaluation: scores and softmax share room; measured 5.0 GB where this says 8.9)
        attention = _attention_values(cfg, task, n_val, blocks=1) // 2
        val = 2 * largest * n_val // max(1, cfg.train.batch_size) + attention
        return saved + _attention_values(cfg, task), val
    positions = math.prod(task.input_shape[1:]) if family == "cnn" else 1
    if MODELS[family].recurrent:
        positions = task.input_shape[0] * GATES[family]  # time steps, one pre-activation per gate
    train = cfg.train.batch_size * width * positions * depth * SAVED_PER_LAYER
    val = len(task.x_val) * width * positions * 2  # no_grad: a layer's input and output at a time
    return train, val


def estimate_bytes(cfg: Any, task: Task) -> dict[str, int]:
    """What a run keeps, by part. Besides training's own: the non-finite guard's snapshot of the parameters and the
    optimizer state (training/snapshot.py, which replays from it), and the update ratio's two flat copies of the
    parameters (probes/update_ratio.py) when that probe is on."""
    params = parameter_count(cfg, task)
    states = OPTIMIZER_STATES[cfg.optimizer.name]
    parts = {
        "parameters and gradients": 2 * params * BYTES_PER_VALUE,
        "optimizer state": states * params * BYTES_PER_VALUE,
        "activations": activation_count(cfg, task) * BYTES_PER_VALUE,
        "non-finite snapshot": (1 + states) * params * BYTES_PER_VALUE,
    }
    if cfg.log.probes.get("update_ratio", 0):
        parts["update-ratio copies"] = 2 * params * BYTES_PER_VALUE
    return parts


def check_memory(cfg: Any, task: Task, dev: torch.device) -> None:
    if model_family(cfg) not in MODELS:  # the user's own class: its size is its own, not estimable from the keys
        return
    parts = estimate_bytes(cfg, task)
    need, limit = sum(parts.values()), available_bytes(dev)
    if need <= limit:
        return
    key, value = _model_culprit(cfg, task, parts)
    detail = ", ".join(f"{name} {_gb(size)}" for name, size in parts.items())
    raise ConfigError(key, value,
                      f"a model that fits {dev.type} memory: this one needs about {_gb(need)} ({detail}); "
                      f"{_gb(limit)} is free")


def _model_culprit(cfg: Any, task: Task, parts: dict[str, int]) -> tuple[str, Any]:
    """Where the weights dominate: the width (squared) or depth, or the image size (an MLP's input layer). Where the
    activations do: also the batch (or the val split, when its pass is the larger), the sequence length (squared
    where attention's (T, T) weights are most of them) and the image size."""
    model, data = cfg.model, cfg.data
    fallback = ("model.width", model.width) if model.width >= model.depth else ("model.depth", model.depth)
    width_default, depth_default = (family_default(model_family(cfg), key) for key in ("width", "depth"))
    depth, image = (model.depth, depth_default, 1), (data.image_size, folder.IMAGE_SIZE, 2)
    weights = sum(size for part, size in parts.items() if part != "activations")  # every part that scales with them
    if weights >= parts["activations"]:
        return _culprit({"model.width": (model.width, width_default, 2), "model.depth": depth,
                         "data.image_size": image}, fallback)
    train, val = _passes(cfg, task)
    if data.name == "text" and 2 * _one_hot_values(cfg, task, val > train) * BYTES_PER_VALUE >= parts["activations"]:
        return "data.path", data.path  # most of it is the one-hot inputs: the file's vocabulary is the size
    batch = {"data.n_val": (data.n_val, DATA[data.name].n_val, 1)} if val > train else \
        {"train.batch_size": (cfg.train.batch_size, TrainConf.batch_size, 1)}
    attention = 2 * _attention_values(cfg, task) * BYTES_PER_VALUE >= parts["activations"]  # (B, heads, T, T)
    return _culprit({"model.width": (model.width, width_default, 1), "model.depth": depth, **batch,
                     "data.seq_len": (data.seq_len, DATA[data.name].seq_len, 2 if attention else 1),
                     "data.image_size": image}, fallback)


def family_default(family: str, key: str) -> int:
    """model.KEY as model=FAMILY's own YAML sets it (cnn: width 16, lstm: depth 1), else the schema's default: what
    the user raised is measured from there."""
    from importlib.resources import files

    from omegaconf import OmegaConf

    path = files("gradexp.configs") / "model" / f"{family}.yaml"
    node = OmegaConf.load(str(path)) if path.is_file() else OmegaConf.create({})
    node = node.get("model", node)  # a YAML that sets other groups nests its own keys under model:
    return node.get(key, getattr(ModelConf, key))


def _gb(size: int) -> str:
    return f"{size / 1e9:.3g} GB"


def task(cfg: Any, dev: torch.device) -> Task:
    """The task, with sizes it cannot give (the digits have 1797 examples) as bad input rather than a crash."""
    from gradexp.training import factory as build

    check_data(cfg, dev)  # before any of it is generated or decoded
    try:
        built = build.task(cfg, dev)
    except ConfigError:  # the data's own one-line refusals (no such folder, no network) name their key
        raise
    except ValueError as err:
        raise ConfigError("data.n_val", cfg.data.n_val, f"a size data={cfg.data.name} can give ({err})") from None
    check_batch(cfg, built)
    check_memory(cfg, built, dev)
    return built
