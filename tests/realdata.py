"""Tiny files in the published formats (MNIST idx gz, CIFAR-10 binary tar.gz), an image folder and a text
file, written by the tests themselves, and a local HTTP server that serves a folder and counts requests."""
from __future__ import annotations

import gzip
import http.server
import io
import os
import socketserver
import struct
import tarfile
import threading
from contextlib import contextmanager

import torch

from gradexp.data.formats import CIFAR_TEST, CIFAR_TRAIN
from gradexp.data.images import _MNIST_FILES


def idx_bytes(t: torch.Tensor) -> bytes:
    """uint8 tensor -> idx file body: 0, 0, 0x08 (ubyte), ndim, big-endian int32 sizes, the raw bytes."""
    return bytes([0, 0, 8, t.dim()]) + struct.pack(f">{t.dim()}I", *t.shape) + t.numpy().tobytes()


def mnist_arrays(n_train: int = 40, n_test: int = 12, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n_train, 28, 28), generator=gen, dtype=torch.uint8),
            torch.randint(0, 10, (n_train,), generator=gen).to(torch.uint8),
            torch.randint(0, 256, (n_test, 28, 28), generator=gen, dtype=torch.uint8),
            torch.randint(0, 10, (n_test,), generator=gen).to(torch.uint8))


def write_mnist(folder: str, arrays) -> None:
    os.makedirs(folder, exist_ok=True)
    for name, t in zip(_MNIST_FILES, arrays):
        with gzip.open(os.path.join(folder, name), "wb") as f:
            f.write(idx_bytes(t))


def cifar_arrays(per_batch: int = 4, seed: int = 0):
    """Five train batches and a test batch of per_batch records each: images (N, 3, 32, 32), labels (N,)."""
    gen = torch.Generator().manual_seed(seed)
    n = 6 * per_batch
    return (torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8),
            torch.randint(0, 10, (n,), generator=gen).to(torch.uint8))


def write_cifar(folder: str, arrays, per_batch: int = 4) -> None:
    os.makedirs(folder, exist_ok=True)
    images, labels = arrays
    records = torch.cat([labels[:, None], images.reshape(len(images), -1)], dim=1).numpy()
    with tarfile.open(os.path.join(folder, "cifar-10-binary.tar.gz"), "w:gz") as archive:
        for i, name in enumerate((*CIFAR_TRAIN, *CIFAR_TEST)):
            body = records[i * per_batch:(i + 1) * per_batch].tobytes()
            info = tarfile.TarInfo(name)
            info.size = len(body)
            archive.addfile(info, io.BytesIO(body))


class _LocalServer(http.server.ThreadingHTTPServer):
    def server_bind(self) -> None:
        """HTTPServer's own server_bind asks socket.getfqdn (a reverse DNS lookup), which waits ~10 s where no
        resolver answers; 127.0.0.1 needs no name."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


@contextmanager
def serve(folder: str):
    """(url, requests): an HTTP server on 127.0.0.1 serving folder in a thread; requests lists the paths asked."""
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=folder, **kwargs)

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = _LocalServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
