"""Fetching a published dataset file once into the cache folder (data.root): download with a progress bar,
checksum, and a file lock so that the jobs of a sweep never download the same file twice at once.

Every failure is a DataError: one line naming the key, the value and what to do, exit 2 (gradexp.config.schema)."""
from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import urllib.error
import urllib.request
from contextlib import contextmanager
from typing import Iterator, Optional

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from gradexp.config.schema import ConfigError

CHUNK = 1 << 16


class DataError(ConfigError):
    """Data that cannot be had or read; str() is the one line the user sees."""

    def __init__(self, key: str, value: object, message: str):
        ValueError.__init__(self, f"{key}={value}: {message}")
        self.key, self.value, self.allowed = key, value, message


class Unreachable(DataError):
    """No answer from the address (no network, a wrong data.url, a timeout); `reason` says which."""

    def __init__(self, source: str, reason: object, path: str):
        super().__init__("data.url", source, f"cannot download ({reason}); without network, put the file at {path} "
                         f"(allowed: an address that answers within data.download_timeout, or the file in place)")
        self.reason = reason


def default_root() -> str:
    """$XDG_CACHE_HOME/gradexp, else ~/.cache/gradexp: shared by every run and sweep job, never a run folder."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gradexp")


def md5(path: str) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def locked(folder: str) -> Iterator[None]:
    """An exclusive flock on folder/.lock: a second process (or thread) waits until the first has finished."""
    with open(os.path.join(folder, ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch(folder: str, name: str, url: str, checksum: str, timeout: float) -> str:
    """folder/name, downloaded from url/name first unless a copy with the right md5 is there already."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with locked(folder):
        if not os.path.isfile(path):
            _download(f"{url.rstrip('/')}/{name}", path, timeout, folder)
        found = md5(path)
        if found != checksum:
            os.remove(path)  # a partial or tampered file would fail every later run the same way
            raise DataError("data.url", url, f"{name} has md5 {found}, not the published {checksum}; "
                            f"the file was removed (allowed: a data.url that serves the published files; run again, "
                            f"or use another mirror)")
    return path


def _download(source: str, path: str, timeout: float, folder: str) -> None:
    """Into path.part, renamed when complete: an interrupted download never looks like a finished file."""
    part = f"{path}.part"
    try:
        with urllib.request.urlopen(source, timeout=timeout) as response, open(part, "wb") as out:
            _copy(response, out, os.path.basename(path), _length(response))
    except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as err:
        if os.path.exists(part):
            os.remove(part)  # ours, from this attempt
        raise Unreachable(source, getattr(err, "reason", err), path) from None
    os.replace(part, path)


def _length(response) -> Optional[int]:
    value = response.headers.get("Content-Length")
    return int(value) if value and value.isdigit() else None


def _copy(response, out, label: str, total: Optional[int]) -> None:
    columns = (TextColumn(f"downloading {label}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(label, total=total)
        for block in iter(lambda: response.read(CHUNK), b""):
            out.write(block)
            bar.advance(task, len(block))
