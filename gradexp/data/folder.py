"""data=image_folder: the user's own images, one sub-folder per class (root/cat/1.jpg, root/dog/2.png, ...),
decoded with Pillow, converted to RGB and resized to image_size x image_size. The val split is a seeded random
tenth (data.n_val to choose), standardised per channel with train statistics."""
from __future__ import annotations

import os
import stat
from typing import BinaryIO, Optional

import torch
from torch import Tensor

from gradexp.data.tasks import Task, _rng
from gradexp.config.schema import first_line
from gradexp.data.download import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
IMAGE_SIZE = 32  # pixels a side, where data.image_size is null


def class_files(root: str) -> dict[str, list[str]]:
    """class name -> its image files, for every sub-folder that holds at least one image."""
    found = {}
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        if os.path.isdir(folder):
            images = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
            if images:
                found[name] = [os.path.join(folder, f) for f in images]
    return found


def _decode(path: str, size: int) -> Tensor:
    """One image -> (3, size, size) float in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    try:
        with _regular_file(path) as f, Image.open(f) as img:
            img = img.convert("RGB").resize((size, size), Image.BILINEAR)
            raw = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:  # the last: a huge image
        raise DataError("data.root", os.path.dirname(os.path.dirname(path)),
                        f"cannot decode {path} ({first_line(err)}); allowed: image files Pillow can read, of at most "
                        f"{Image.MAX_IMAGE_PIXELS * 2:,} pixels each") from None
    return raw.reshape(size, size, 3).permute(2, 0, 1).float() / 255


def _regular_file(path: str) -> BinaryIO:
    """The file at `path` opened for reading, or OSError where it is no regular file. Opened without waiting: a FIFO
    named x.jpg made Pillow's open block forever, past SIGTERM (found by an adversarial test)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError("not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _check_root(root: Optional[str]) -> dict[str, list[str]]:
    if root is None or not os.path.isdir(root):
        raise DataError("data.root", root, "allowed: an existing folder with one sub-folder of images per class")
    classes = class_files(root)
    if len(classes) < 2:
        names = ", ".join(classes) or "none"
        raise DataError("data.root", root, f"has {len(classes)} class folder(s) with images ({names}); "
                        f"allowed: a folder with at least two sub-folders of images ({', '.join(IMAGE_EXTENSIONS)})")
    return classes


def image_folder(seed: int, n_train: Optional[int], n_val: Optional[int], seq_len: None, root: Optional[str] = None,
                 image_size: int = IMAGE_SIZE) -> Task:
    classes = _check_root(root)
    paths = [(p, label) for label, files in enumerate(classes.values()) for p in files]
    n_val = max(1, len(paths) // 10) if n_val is None else n_val
    if n_val >= len(paths):
        raise DataError("data.n_val", n_val, f"allowed: fewer than the {len(paths)} images in {root}")
    x = torch.stack([_decode(p, image_size) for p, _ in paths])  # (N, 3, S, S)
    y = torch.tensor([label for _, label in paths])
    perm = torch.randperm(len(paths), generator=_rng(seed, 0))
    val, train = perm[:n_val], perm[n_val:][:n_train]
    mean = x[train].mean((0, 2, 3), keepdim=True)
    # a constant channel (grey images as RGB), or one train pixel (std undefined; found by an adversarial test), is
    # only shifted
    one = x[train][:, 0].numel() < 2
    std = torch.ones_like(mean) if one else x[train].std((0, 2, 3), keepdim=True)
    std = torch.where(std >= 1e-6, std, torch.ones_like(std))
    xt, xv = (x[train] - mean) / std, (x[val] - mean) / std
    return Task("image_folder", "classification", xt, y[train], xv, y[val], tuple(xt.shape[1:]), len(classes), False, 0)
