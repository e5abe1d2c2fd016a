"""data=text: a character-level language model on the user's file (data.path). The vocabulary is the file's
distinct characters; examples are consecutive windows of seq_len characters, each predicting the next
character at every step (loss: cross-entropy in nats; metric: bits per character). The val split is the
file's last tenth (data.n_val windows to choose), so no val character is trained on."""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

from gradexp.data.tasks import Task
from gradexp.data.download import DataError


def _read(path: Optional[str]) -> str:
    """The file's characters. Decoded strictly: a file that is not UTF-8 text (a compressed corpus, another encoding)
    would otherwise train on U+FFFD stand-ins for every byte that does not decode, and look like a working run."""
    if path is None:
        raise DataError("data.path", "(not set)", "allowed: a UTF-8 text file of yours, which data=text trains on "
                        "(give data.path=FILE)")
    if not os.path.isfile(path):
        raise DataError("data.path", path, "allowed: an existing text file (UTF-8)")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError("data.path", path, f"allowed: a UTF-8 text file (byte {err.start} is 0x{raw[err.start]:02x}, "
                        f"which is not UTF-8 there: a compressed or binary file, or another encoding)") from None


def _windows(ids: Tensor, seq_len: int) -> tuple[Tensor, Tensor]:
    """ids (L,) -> inputs (N, T) and next-character targets (N, T), non-overlapping windows of T = seq_len."""
    n = (len(ids) - 1) // seq_len
    x = ids[:n * seq_len].reshape(n, seq_len)
    y = ids[1:n * seq_len + 1].reshape(n, seq_len)
    return x, y


def text(seed: int, n_train: Optional[int], n_val: Optional[int], seq_len: int, path: Optional[str] = None) -> Task:
    chars = _read(path)
    if len(chars) < 2 * seq_len + 1:  # one train and one val window, plus the last window's next character
        raise DataError("data.path", path, f"has {len(chars)} characters; allowed: a text file of at least "
                        f"2*data.seq_len+1 = {2 * seq_len + 1} characters (or a smaller data.seq_len)")
    vocab = sorted(set(chars))
    lookup = {c: i for i, c in enumerate(vocab)}
    x, y = _windows(torch.tensor([lookup[c] for c in chars]), seq_len)
    n_val = max(1, len(x) // 10) if n_val is None else n_val
    if n_val >= len(x):
        raise DataError("data.n_val", n_val, f"allowed: fewer than the {len(x)} windows of {seq_len} characters "
                        f"in {path}")
    cut = len(x) - n_val
    return Task("text", "language_model", x[:cut][:n_train], y[:cut][:n_train], x[cut:], y[cut:],
                (seq_len, len(vocab)), len(vocab), True, seq_len, vocab_size=len(vocab))
