"""The input pipeline for data.workers > 0 or data.augment: a torch DataLoader over the train split kept in host
memory, cutting the same batches as gradexp.data.tasks.Batches, in worker processes, pinned and copied without blocking
on CUDA.

Determinism: which examples form batch k comes from Batches' seeded permutation stream, drawn in the main
process; the augmentation of batch k is seeded by (seed, k). So the stream does not depend on the number of
workers, and `state_dict` (the stream's position after the batches handed out, not after those prefetched)
lets a resumed run continue it exactly."""
from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from gradexp.data.tasks import Batches

CROP_PADDING = 4  # "standard" CIFAR augmentation: 4-pixel zero padding, random crop back, random horizontal flip


def augment_standard(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random crop (after zero padding) and horizontal flip of each image; (B, C, H, W) -> (B, C, H, W)."""
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (CROP_PADDING,) * 4)
    top = torch.randint(0, 2 * CROP_PADDING + 1, (b,), generator=gen)
    left = torch.randint(0, 2 * CROP_PADDING + 1, (b,), generator=gen)
    flip = torch.rand(b, generator=gen) < 0.5
    crops = [padded[i, :, top[i]:top[i] + h, left[i]:left[i] + w] for i in range(b)]
    out = torch.stack(crops)
    out[flip] = out[flip].flip(-1)
    return out


class _Cut(Dataset):
    """dataset[(k, idx)] -> batch k: rows idx of the train split, augmented with batch k's own generator."""

    def __init__(self, x: Tensor, y: Tensor, augment: str, seed: int) -> None:
        self.x, self.y, self.augment, self.seed = x, y, augment, seed

    def __getitem__(self, key: tuple[int, Tensor]) -> tuple[Tensor, Tensor]:
        k, idx = key
        x = self.x[idx]
        if self.augment == "standard":
            x = augment_standard(x, torch.Generator().manual_seed(self.seed * 1_000_003 + k))
        return x, self.y[idx]


class Loader:
    """Endless batches of fixed size, as Batches.next() gives them (plus augmentation), from a DataLoader."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, seed: int, workers: int, augment: str,
                 device: torch.device) -> None:
        rows = torch.arange(len(x))
        self.stream = Batches(rows, rows, batch_size, seed)  # the index stream: the same permutations as Batches
        self.dataset = _Cut(x, y, augment, seed)
        self.workers, self.device = workers, device
        self.batch = 0                       # batches handed out
        self._drawn: dict[int, dict] = {}     # batch k -> the stream's state after drawing it (prefetched ones too)
        self._state = self.stream.state_dict()
        self._batches: Optional[Iterator] = None

    def _keys(self) -> Iterator[tuple[int, Tensor]]:
        k = self.batch
        while True:
            idx, _ = self.stream.next()
            self._drawn[k] = self.stream.state_dict()
            yield k, idx
            k += 1

    def _start(self) -> Iterator:
        cuda = self.device.type == "cuda"
        loader = DataLoader(self.dataset, sampler=_Keys(self._keys), batch_size=None, num_workers=self.workers,
                            pin_memory=cuda, prefetch_factor=4 if self.workers else None,
                            persistent_workers=False)
        return iter(loader)

    def next(self) -> tuple[Tensor, Tensor]:
        if self._batches is None:
            self._batches = self._start()
        x, y = next(self._batches)
        self._state = self._drawn.pop(self.batch)
        self.batch += 1
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def close(self) -> None:
        """Stop the workers now: an iterator left to the garbage collector shuts them down whenever it is collected,
        in whatever code runs then (and waits up to 5 s a worker there, where one is slow to go)."""
        batches, self._batches = self._batches, None
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def state_dict(self) -> dict:
        return {"batch": self.batch, "stream": self._state}

    def check_drawn(self, batches: int, state: dict) -> None:
        """ValueError unless `state` is this loader's after `batches` batches (Batches.check_drawn)."""
        if not isinstance(state, dict) or state.get("batch") != batches:
            raise ValueError(f"the loader's batch count is not the {batches} batches drawn")
        self.stream.check_drawn(batches, state.get("stream"))

    def load_state_dict(self, state: dict) -> None:
        if type(state["batch"]) is not int or state["batch"] < 0:  # a tampered checkpoint (Batches checks the stream)
            raise ValueError(f"the loader's batch count {state['batch']!r} is not a count")
        self._batches = None  # the next batch starts a fresh DataLoader (and workers) from the restored position
        self._drawn.clear()
        self.stream.load_state_dict(state["stream"])
        self._state, self.batch = state["stream"], state["batch"]


class _Keys:
    """A sampler made from a generator function: DataLoader iterates it in the main process."""

    def __init__(self, make: callable) -> None:
        self.make = make

    def __iter__(self) -> Iterator:
        return self.make()
