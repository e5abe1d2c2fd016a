"""Readers of the published binary formats, straight into uint8 tensors (no pickle is ever loaded).

MNIST / Fashion-MNIST idx (gzip): a big-endian header (0, 0, dtype 0x08 = ubyte, ndim, then ndim int32 sizes)
followed by the raw bytes. CIFAR-10 binary (cifar-10-binary.tar.gz): data_batch_1..5.bin and test_batch.bin, each
10000 records of 1 label byte + 3072 pixel bytes (1024 red, 1024 green, 1024 blue, row-major 32x32)."""
from __future__ import annotations

import gzip
import struct
import tarfile

import torch
from torch import Tensor

CIFAR_RECORD = 1 + 3 * 32 * 32
CIFAR_TRAIN = tuple(f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST = ("cifar-10-batches-bin/test_batch.bin",)


class FormatError(ValueError):
    """A file that is not in the format it should be; the message names the file."""


def read_idx(path: str) -> Tensor:
    """A gzipped idx file of unsigned bytes -> uint8 tensor of its declared shape."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise FormatError(f"{path} is not an idx file of unsigned bytes")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = raw[4 + 4 * ndim:]
    if len(body) != _prod(shape):
        raise FormatError(f"{path}: header says {shape} ({_prod(shape)} bytes) but {len(body)} bytes follow")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(shape)


def read_cifar(path: str, members: tuple[str, ...]) -> tuple[Tensor, Tensor]:
    """The named batches of cifar-10-binary.tar.gz -> images (N, 3, 32, 32) uint8, labels (N,) int64."""
    with tarfile.open(path, "r:gz") as archive:
        chunks = [_member(archive, name, path) for name in members]
    records = torch.cat(chunks)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].long()


def _member(archive: tarfile.TarFile, name: str, path: str) -> Tensor:
    """One batch file's records (n, 3073), read from the archive without extracting it to disk."""
    try:
        data = archive.extractfile(name).read()
    except (KeyError, AttributeError):
        raise FormatError(f"{path} has no {name}: not the CIFAR-10 binary version") from None
    if len(data) % CIFAR_RECORD:
        raise FormatError(f"{path}: {name} is {len(data)} bytes, not a whole number of {CIFAR_RECORD}-byte records")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).reshape(-1, CIFAR_RECORD)


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
