"""Reproducibility: every random-number state a run depends on, as plain tensors, and the deterministic-algorithms switch.

RNG states are stored as tensors/ints (not numpy objects or tuples of Python ints) so that a checkpoint
loads with torch.load(weights_only=True)."""
from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """torch CPU, CUDA (every device, when CUDA is initialised), numpy and Python `random` states."""
    version, mt, gauss = random.getstate()  # mt: 625 ints < 2**32
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["mt"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def use_deterministic(enabled: bool) -> None:
    """train.deterministic: deterministic kernels everywhere (an op without one raises instead of varying).

    cuBLAS needs CUBLAS_WORKSPACE_CONFIG set before its first call to be deterministic; setting it here
    works when no CUDA matmul has run yet in this process (true for `gradexp run`)."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = False
