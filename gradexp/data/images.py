"""MNIST, Fashion-MNIST and CIFAR-10: downloaded once into data.root (checksummed, locked), parsed from their
published binary formats, standardised with train statistics. The official test split is the val split."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from gradexp.data.tasks import Task, _rng
from gradexp.data.download import DataError, Unreachable, default_root, fetch
from gradexp.data.formats import CIFAR_TEST, CIFAR_TRAIN, FormatError, read_cifar, read_idx


@dataclass
class Source:
    url: str                    # the folder the files are fetched from (data.url overrides it)
    files: dict[str, str]       # file name -> published md5


_MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
# the md5s the datasets' authors (and torchvision) publish; tests put their own tiny files' sums here
SOURCES: dict[str, Source] = {
    "mnist": Source("https://ossci-datasets.s3.amazonaws.com/mnist", dict(zip(_MNIST_FILES, (
        "f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
        "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c")))),
    "fashion_mnist": Source("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com", dict(zip(_MNIST_FILES, (
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
        "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310")))),
    "cifar10": Source("https://www.cs.toronto.edu/~kriz",
                      {"cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530"}),
}


def _files(name: str, root: Optional[str], url: Optional[str], download_timeout: float) -> dict[str, str]:
    """file name -> local path under root/name, each fetched (once) and checked."""
    source = SOURCES[name]
    root = default_root() if root is None else root
    if os.path.exists(root) and not os.path.isdir(root):
        raise DataError("data.root", root, "is a file; allowed: a folder (created if missing)")
    folder = os.path.join(os.path.expanduser(root), name)
    try:
        return {f: fetch(folder, f, source.url if url is None else url, md5, download_timeout)
                for f, md5 in source.files.items()}
    except Unreachable as err:  # name every file the user has to fetch by hand, not only the first one missing
        raise DataError("data.url", err.value, f"cannot download ({err.reason}); without network, put "
                        f"{', '.join(source.files)} (from {source.url}) into {folder} (allowed: an address that "
                        f"answers within data.download_timeout, or those files in place)") from None


def _select(seed: int, n: int, n_train: Optional[int]) -> Tensor:
    """Indices of the train examples used: all of them, or a seeded random n_train of them."""
    if n_train is None or n_train >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=_rng(seed, 0))[:n_train]


def _task(name: str, seed: int, n_train: Optional[int], n_val: int, train: tuple[Tensor, Tensor],
          val: tuple[Tensor, Tensor], per_channel: bool) -> Task:
    """uint8 images (N, C, H, W) -> a classification Task standardised with the train split's mean and std."""
    (xt, yt), (xv, yv) = train, val
    keep = _select(seed, len(xt), n_train)
    xt, yt, xv, yv = xt[keep].float() / 255, yt[keep].long(), xv[:n_val].float() / 255, yv[:n_val].long()
    dims = (0, 2, 3) if per_channel else None  # CIFAR: per colour channel; grey images: one mean and std
    mean = xt.mean() if dims is None else xt.mean(dims, keepdim=True)
    std = xt.std() if dims is None else xt.std(dims, keepdim=True)
    xt, xv = (xt - mean) / std, (xv - mean) / std
    return Task(name, "classification", xt, yt, xv, yv, tuple(xt.shape[1:]), 10, False, 0)


def _idx_task(name: str, seed: int, n_train: Optional[int], n_val: int, root: Optional[str], url: Optional[str],
              download_timeout: float) -> Task:
    paths = _files(name, root, url, download_timeout)
    try:
        xt, yt, xv, yv = (read_idx(paths[f]) for f in _MNIST_FILES)
    except FormatError as err:
        raise DataError("data.root", root, f"{err}; allowed: the published files (move it away to fetch it "
                        f"again)") from None
    return _task(name, seed, n_train, n_val, (xt.unsqueeze(1), yt), (xv.unsqueeze(1), yv), per_channel=False)


def mnist(seed: int, n_train: Optional[int], n_val: int, seq_len: None, root: Optional[str] = None,
          url: Optional[str] = None, download_timeout: float = 30.0) -> Task:
    return _idx_task("mnist", seed, n_train, n_val, root, url, download_timeout)


def fashion_mnist(seed: int, n_train: Optional[int], n_val: int, seq_len: None, root: Optional[str] = None,
                  url: Optional[str] = None, download_timeout: float = 30.0) -> Task:
    return _idx_task("fashion_mnist", seed, n_train, n_val, root, url, download_timeout)


def cifar10(seed: int, n_train: Optional[int], n_val: int, seq_len: None, root: Optional[str] = None,
            url: Optional[str] = None, download_timeout: float = 30.0) -> Task:
    (archive,) = _files("cifar10", root, url, download_timeout).values()
    try:
        train, val = read_cifar(archive, CIFAR_TRAIN), read_cifar(archive, CIFAR_TEST)
    except FormatError as err:
        raise DataError("data.root", root, f"{err}; allowed: the published files (move it away to fetch it "
                        f"again)") from None
    return _task("cifar10", seed, n_train, n_val, train, val, per_channel=True)
