"""data=recall: associative recall, a token task made for attention (Ba et al. 2016; the Zoology benchmark's
multi-query AR in its one-query form). Each example lists seq_len key-value pairs, then one of its keys again:

    k_1 v_1 k_2 v_2 ... k_n v_n q      (T = 2n + 1 tokens; q is one of k_1..k_n)

and the target is the value that followed q. Keys are distinct within an example; values may repeat. Tokens are
ids (keys 0..K-1, values K..K+V-1) with vocab_size K+V, like data=text: feature-reading models get them one-hot
(Task.inputs). A model that does not look back at the pairs can do no better than chance, 1/V."""
from __future__ import annotations

import torch
from torch import Tensor

from gradexp.data.tasks import Task, _rng

RECALL_KEYS, RECALL_VALUES = 16, 8  # K: at least seq_len keys are drawn (distinct), so K grows with a longer seq_len


def keys_for(pairs: int) -> int:
    return max(RECALL_KEYS, pairs)


def _examples(n: int, pairs: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """(N, 2*pairs+1) token ids and (N,) targets in [0, V)."""
    k = keys_for(pairs)
    keys = torch.argsort(torch.rand(n, k, generator=gen), dim=1)[:, :pairs]  # (N, n): distinct keys per row
    values = torch.randint(0, RECALL_VALUES, (n, pairs), generator=gen)  # (N, n)
    asked = torch.randint(0, pairs, (n,), generator=gen)  # which pair the query names
    rows = torch.arange(n)
    tokens = torch.empty(n, 2 * pairs + 1, dtype=torch.int64)
    tokens[:, 0:-1:2] = keys
    tokens[:, 1:-1:2] = values + k
    tokens[:, -1] = keys[rows, asked]
    return tokens, values[rows, asked]


def recall(seed: int, n_train: int, n_val: int, seq_len: int) -> Task:
    xt, yt = _examples(n_train, seq_len, _rng(seed, 1))
    xv, yv = _examples(n_val, seq_len, _rng(seed, 2))
    vocab = keys_for(seq_len) + RECALL_VALUES
    return Task("recall", "classification", xt, yt, xv, yv, (2 * seq_len + 1, vocab), RECALL_VALUES, True, 1,
                vocab_size=vocab)
