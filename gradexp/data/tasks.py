"""Datasets as in-memory tensors: synthetic blobs, sklearn digits, and sequence tasks.

Every task is deterministic from its seed (CPU ``torch.Generator``). The task structure
(blob centers, digits split), the train set and the val set use separate streams, so the
val set does not change when only ``n_train`` does.

Sequence classification targets: ``y`` is (B,) when ``readout_steps == 1`` (seq_digits) and
(B, k) when ``readout_steps == k > 1`` (copy); model output is (B, k, C) or (B, C).
Loss and metrics flatten both, so either output form works.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gradexp.config.registry import DATA, check_name, resolve

BLOB_CLASSES, BLOB_FEATURES, BLOB_RADIUS = 4, 16, 2.5  # radius tuned: linear val acc ~ 0.9
ADDING_TOLERANCE = 0.04  # Hochreiter & Schmidhuber's "solved" criterion
COPY_SYMBOLS, COPY_LENGTH = 8, 5
COPY_BLANK, COPY_DELIMITER = COPY_SYMBOLS, COPY_SYMBOLS + 1  # one-hot size COPY_SYMBOLS + 2


@dataclass
class Task:
    name: str
    kind: str  # "classification" | "regression"
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    input_shape: tuple[int, ...]  # one example: (D,), (C, H, W) or (T, F)
    num_outputs: int
    sequence: bool
    readout_steps: int  # final time steps that carry targets; 0 for non-sequence tasks
    # token tasks (data=text): x holds token ids (N, T) and input_shape is (T, vocab_size); `inputs` turns ids into
    # one-hot features for models that read features (rnn/lstm/gru); a token model reads the ids as they are
    vocab_size: Optional[int] = None

    def loss(self, output: Tensor, y: Tensor) -> Tensor:
        """Cross-entropy (mean over examples and readout steps) or MSE; scalar."""
        if self.kind == "regression":
            return F.mse_loss(output.reshape(y.shape), y)
        return F.cross_entropy(output.reshape(-1, output.shape[-1]), y.reshape(-1))

    def metrics(self, output: Tensor, y: Tensor) -> dict[str, Tensor]:
        """{"acc": 0-d tensor} on the output's device (no host sync); language models add bits per character."""
        if self.kind == "regression":
            hit = (output.reshape(y.shape) - y).abs() < ADDING_TOLERANCE
        else:
            predicted = output.argmax(-1)
            hit = (predicted if predicted.shape == y.shape else predicted.reshape(y.shape)) == y  # per example/symbol
        found = {"acc": hit.mean(dtype=torch.float32)}  # as .float().mean(), one operator fewer
        if self.kind == "language_model":
            found["bpc"] = self.loss(output, y) / math.log(2)  # nats per character -> bits per character
        return found

    def constant_loss(self) -> Optional[float]:
        """The train loss of the best prediction that ignores the input: the targets' mean under MSE, their class
        frequencies under cross-entropy (their entropy). A loss that fell to half of its first value may only have
        found that (the adding problem: 0.96 -> 0.186 against 0.167; found by a new user), so the verdict asks a
        run that halved its loss to end below this one too. None where the targets are not at hand."""
        y = self.y_train
        if not isinstance(y, Tensor) or not y.numel():
            return None
        if self.kind == "regression":
            flat = y.reshape(len(y), -1).double()
            return (flat - flat.mean(dim=0)).square().mean().item()
        labels = y.reshape(-1).long()
        if labels.min() < 0:  # a label torch's cross-entropy would not take: no such baseline
            return None
        share = torch.bincount(labels).double()
        share = share[share > 0] / labels.numel()
        return -(share * share.log()).sum().item()

    def inputs(self, x: Tensor) -> Tensor:
        """What a feature-reading model gets: x itself, or one-hot (B, T, vocab_size) floats for token ids."""
        return x if self.vocab_size is None else F.one_hot(x, self.vocab_size).float()

    def to(self, device: torch.device | str) -> Task:
        moved = {f: getattr(self, f).to(device) for f in ("x_train", "y_train", "x_val", "y_val")}
        return dataclasses.replace(self, **moved)


def _rng(seed: int, stream: int) -> torch.Generator:
    """Independent CPU generator per (seed, stream): 0 structure, 1 train, 2 val."""
    return torch.Generator().manual_seed((seed * 3 + stream) % 2**63)


def _standardize(train: Tensor, val: Tensor, dim: int | None) -> tuple[Tensor, Tensor]:
    """Shift and scale both splits with train statistics (per feature, or global if dim is None)."""
    mean = train.mean() if dim is None else train.mean(dim, keepdim=True)
    # a constant feature, or one train example (whose std is undefined), is only shifted: NaN inputs everywhere were
    # logged as a diverged run and blamed on the learning rate (found by an adversarial test)
    if (train.numel() if dim is None else train.shape[dim]) < 2:
        return train - mean, val - mean
    std = train.std() if dim is None else train.std(dim, keepdim=True)
    std = torch.where(std >= 1e-6, std, torch.ones_like(std))
    return (train - mean) / std, (val - mean) / std


def blobs(seed: int, n_train: int, n_val: int, seq_len: int | None) -> Task:
    # orthonormal center directions: every pair of classes is equally far apart for any seed
    q, _ = torch.linalg.qr(torch.randn(BLOB_FEATURES, BLOB_CLASSES, generator=_rng(seed, 0)))
    centers = BLOB_RADIUS * q.T  # (K, D)

    def sample(n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        y = torch.randint(0, BLOB_CLASSES, (n,), generator=gen)
        return centers[y] + torch.randn(n, BLOB_FEATURES, generator=gen), y

    (xt, yt), (xv, yv) = sample(n_train, _rng(seed, 1)), sample(n_val, _rng(seed, 2))
    xt, xv = _standardize(xt, xv, dim=0)
    return Task("blobs", "classification", xt, yt, xv, yv, (BLOB_FEATURES,), BLOB_CLASSES, False, 0)


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[Tensor, Tensor]:
    """scikit-learn's bundled 8x8 digits, read from its own file: load_digits() would import sklearn first, ~1.8 s of
    a sweep job's start-up on 2 cores, for 200 kB of CSV (the same values: tests/test_data.py)."""
    path = _sklearn_digits_file()
    if path is None:  # a sklearn that moved or dropped the file: its own loader
        from sklearn.datasets import load_digits

        bunch = load_digits()
        data = np.column_stack([bunch.data, bunch.target])
    else:
        data = np.loadtxt(path, delimiter=",")  # (1797, 65): 64 pixels in 0..16, then the label
    x = torch.as_tensor(data[:, :-1], dtype=torch.float32) / 16.0  # (1797, 64), pixels in [0, 1]
    return x, torch.as_tensor(data[:, -1].astype(np.int64))


def _sklearn_digits_file() -> str | None:
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            return path
    return None


def _digit_split(seed: int, n_train: int | None, n_val: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x, y = _digits_arrays()
    if n_val >= len(x):
        raise ValueError(f"digits: n_val={n_val} leaves no training examples (only {len(x)} in total)")
    perm = torch.randperm(len(x), generator=_rng(seed, 0))
    val, train = perm[:n_val], perm[n_val:][:n_train]  # n_train None = all the rest
    xt, xv = _standardize(x[train], x[val], dim=None)  # one global mean/std: keeps pixel geometry
    return xt, y[train], xv, y[val]


def digits(seed: int, n_train: int | None, n_val: int, seq_len: int | None) -> Task:
    xt, yt, xv, yv = _digit_split(seed, n_train, n_val)
    shape = (1, 8, 8)  # (C, H, W)
    return Task("digits", "classification", xt.reshape(-1, *shape), yt,
                xv.reshape(-1, *shape), yv, shape, 10, False, 0)


def seq_digits(seed: int, n_train: int | None, n_val: int, seq_len: int | None) -> Task:
    xt, yt, xv, yv = _digit_split(seed, n_train, n_val)
    shape = (8, 8)  # (T, F): one image row per time step
    return Task("seq_digits", "classification", xt.reshape(-1, *shape), yt,
                xv.reshape(-1, *shape), yv, shape, 10, True, 1)


def _adding_examples(n: int, seq_len: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    values = torch.rand(n, seq_len, generator=gen)  # (N, T)
    half, rows = seq_len // 2, torch.arange(n)
    first = torch.randint(0, half, (n,), generator=gen)  # one mark in each half
    second = torch.randint(half, seq_len, (n,), generator=gen)
    marks = torch.zeros(n, seq_len)
    marks[rows, first] = 1.0
    marks[rows, second] = 1.0
    target = (values[rows, first] + values[rows, second]).unsqueeze(1)  # (N, 1)
    return torch.stack([values, marks], dim=-1), target  # (N, T, 2)


def adding(seed: int, n_train: int, n_val: int, seq_len: int) -> Task:
    xt, yt = _adding_examples(n_train, seq_len, _rng(seed, 1))
    xv, yv = _adding_examples(n_val, seq_len, _rng(seed, 2))
    return Task("adding", "regression", xt, yt, xv, yv, (seq_len, 2), 1, True, 1)


def _copy_examples(n: int, seq_len: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    symbols = torch.randint(0, COPY_SYMBOLS, (n, COPY_LENGTH), generator=gen)  # (N, L)
    # L symbols, seq_len - 1 blanks, delimiter, L blanks: T = seq_len + 2L
    tokens = torch.full((n, seq_len + 2 * COPY_LENGTH), COPY_BLANK)
    tokens[:, :COPY_LENGTH] = symbols
    tokens[:, COPY_LENGTH + seq_len - 1] = COPY_DELIMITER
    return F.one_hot(tokens, COPY_SYMBOLS + 2).float(), symbols  # (N, T, 10), (N, L)


def copy(seed: int, n_train: int, n_val: int, seq_len: int) -> Task:
    xt, yt = _copy_examples(n_train, seq_len, _rng(seed, 1))
    xv, yv = _copy_examples(n_val, seq_len, _rng(seed, 2))
    return Task("copy", "classification", xt, yt, xv, yv, tuple(xt.shape[1:]),
                COPY_SYMBOLS, True, COPY_LENGTH)


def make_task(name: str, seed: int, n_train: int | None = None, n_val: int | None = None,
              seq_len: int | None = None, **options) -> Task:
    """Build task `name` (an entry of gradexp/config/registry.py's DATA); None sizes take the task's defaults there.
    `options` are the data.* keys the entry names in Data.keys (root, url, path, image_size, ...)."""
    check_name("task", name, DATA)
    entry = DATA[name]
    if seq_len is not None and entry.seq_len is None:
        raise ValueError(f"task {name!r} takes no seq_len (got {seq_len}); "
                         f"only {', '.join(n for n, d in DATA.items() if d.seq_len is not None)} do")
    if seq_len is not None and seq_len < entry.min_seq_len:
        raise ValueError(f"task {name!r}: seq_len must be >= {entry.min_seq_len}, got {seq_len}")
    for key, value in (("n_train", n_train), ("n_val", n_val)):
        if value is not None and value < 1:
            raise ValueError(f"task {name!r}: {key} must be >= 1, got {value}")
    return resolve(entry.target)(seed, entry.n_train if n_train is None else n_train,
                                 entry.n_val if n_val is None else n_val,
                                 entry.seq_len if seq_len is None else seq_len, **options)


class Batches:
    """Endless minibatches of fixed size from a stream of per-epoch permutations.

    Consecutive epochs are concatenated, so every example appears exactly once per epoch
    and every batch has `batch_size` rows (a batch may straddle two epochs).
    """

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, seed: int) -> None:
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"x and y need the same nonzero length, got {len(x)} and {len(y)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.x, self.y, self.batch_size = x, y, batch_size
        self._gen = torch.Generator().manual_seed(seed)
        self.epoch = -1
        self._start_epoch()

    def _start_epoch(self) -> None:
        self._epoch_state = self._gen.get_state()  # state that draws this epoch's permutation
        self._perm = torch.randperm(len(self.x), generator=self._gen).to(self.x.device)
        self.epoch += 1
        self.position = 0

    def next(self) -> tuple[Tensor, Tensor]:
        chunks, need = [], self.batch_size
        while need > 0:
            if self.position == len(self.x):
                self._start_epoch()
            take = min(need, len(self.x) - self.position)
            chunks.append(self._perm[self.position:self.position + take])
            self.position += take
            need -= take
        idx = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
        return self.x[idx], self.y[idx]

    def close(self) -> None:
        """Nothing to stop: batches are cut in this process (data/loader.py's Loader has workers to stop)."""

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "generator": self._epoch_state.clone()}

    def check_drawn(self, batches: int, state: dict) -> None:
        """ValueError unless `state` is where this stream stands after `batches` batches (epochs are concatenated
        and the next one starts only when a batch needs it): a checkpoint's step and data position must agree. Found
        by an adversarial test: a forged step of 3000 ended a run 'completed' after ~150 real updates."""
        if not isinstance(state, dict):  # a list gave an AttributeError, a tensor a traceback (a review)
            raise ValueError(f"the data stream's state is a {type(state).__name__}, not a mapping")
        drawn, size = batches * self.batch_size, len(self.x)
        epoch = (drawn - 1) // size if drawn else 0
        expected = (epoch, drawn - epoch * size)
        if (state.get("epoch"), state.get("position")) != expected:  # or the data has changed size since
            raise ValueError(f"after {batches} batches of {self.batch_size} from {size} examples the data stands at "
                             f"epoch {expected[0]}, position {expected[1]}; the checkpoint says epoch "
                             f"{state.get('epoch')!r}, position {state.get('position')!r}")

    def load_state_dict(self, state: dict) -> None:
        """ValueError for a state this stream cannot have been in (a tampered checkpoint): a position past the end of
        the data would make next() loop forever."""
        epoch, position = state["epoch"], state["position"]
        if not (type(epoch) is int and epoch >= 0 and type(position) is int and 0 <= position <= len(self.x)):
            raise ValueError(f"the data stream's state (epoch {epoch!r}, position {position!r}) is not one of this data "
                             f"({len(self.x)} examples)")
        self._gen.set_state(state["generator"])
        self.epoch = epoch - 1
        self._start_epoch()  # redraws the saved epoch's permutation
        self.position = state["position"]
