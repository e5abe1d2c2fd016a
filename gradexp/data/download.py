"""Fetching a published dataset file once into the cache folder (data.root): download with a progress bar,
checksum, and a file lock so that the jobs of a sweep never download the same file twice at once.

Only what this invocation created is ever removed or replaced: a download goes to a temporary file of its own
and is renamed into place once its md5 is the published one; a file already there is checked, never touched;
the lock file goes with the invocation that created it.

Every failure is a DataError: one line naming the key, the value and what to do, exit 2 (gradexp.config.schema)."""
from __future__ import annotations

import errno
import fcntl
import hashlib
import http.client
import os
import secrets
import socket
import stat
import urllib.error
import urllib.request
from contextlib import contextmanager
from typing import Iterator, Optional

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from gradexp.config.schema import ConfigError, first_line

CHUNK = 1 << 16
LOCK = ".lock"


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
    """An exclusive flock on folder/.lock: a second process (or thread) waits until the first has finished.
    The process that created the file removes it, still holding the lock; a .lock it did not create (another
    process's, the user's) is locked as it is and left."""
    path = os.path.join(folder, LOCK)
    try:
        handle, created = _lock(path)
    except OSError as err:
        raise DataError("data.root", folder, f"cannot lock {path} ({err.strerror or err}); allowed: a folder "
                        f"gradexp can write, where {LOCK} is absent or a writable file") from None
    try:
        yield
    finally:
        if created and _same(handle, path):
            os.remove(path)  # before the unlock: a waiter then finds its file gone and locks afresh (_lock)
        os.close(handle)  # releases the flock


def _lock(path: str) -> tuple[int, bool]:
    """(a descriptor holding an exclusive flock on path, whether this call created path)."""
    while True:
        try:
            handle, created = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), True
        except FileExistsError:
            try:  # read-only (flock needs no more: another user's .lock will do); O_NONBLOCK: a FIFO
                handle, created = os.open(path, os.O_RDONLY | os.O_NONBLOCK), False
            except FileNotFoundError:
                if os.path.islink(path):  # a dangling link: O_EXCL sees it, open cannot follow it
                    raise
                continue  # its creator removed it in between
            if not stat.S_ISREG(os.fstat(handle).st_mode):  # a FIFO or a device: not a lock file
                os.close(handle)
                raise OSError(errno.EINVAL, "not a regular file", path)
        fcntl.flock(handle, fcntl.LOCK_EX)
        if _same(handle, path):
            return handle, created
        os.close(handle)  # its creator removed it while we waited: lock whatever .lock is there now


def _same(handle: int, path: str) -> bool:
    """Whether path still names the file open as handle."""
    try:
        there = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(handle)
    return (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino)


def fetch(folder: str, name: str, url: str, checksum: str, timeout: float) -> str:
    """folder/name, downloaded from url/name first unless it is there already; either way its md5 is checked."""
    path = os.path.join(folder, name)
    if os.path.isfile(path):  # renamed into place whole: checked without the lock (a read-only shared cache works)
        _check_found(folder, path, checksum)
        return path
    topmost = _topmost_missing(folder)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:  # under a file, read-only, a name too long
        raise DataError("data.root", folder, f"cannot create it ({err.strerror or err}; allowed: a folder gradexp "
                        f"can create or write, or the files put there by hand)") from None
    try:
        with locked(folder):
            if os.path.isfile(path):
                _check_found(folder, path, checksum)
            elif os.path.lexists(path):  # a folder, a dangling link: not ours to replace
                raise DataError("data.root", folder, f"{path} is there but is not a file; it was left as it is "
                                f"(allowed: the published file there; move it away so gradexp downloads a fresh "
                                f"copy, or point data.root at another folder)")
            else:
                _download(url, name, path, checksum, timeout)
    except BaseException:  # a refused or failed download leaves no folder it made (found by a new user: data.root/mnist/)
        _remove_empty(folder, topmost)
        raise
    return path


def _topmost_missing(folder: str) -> Optional[str]:
    """The highest folder on the way to `folder` that does not exist yet (None: it exists)."""
    missing = None
    while not os.path.lexists(folder) and os.path.dirname(folder) != folder:
        missing, folder = folder, os.path.dirname(folder)
    return missing


def _remove_empty(folder: str, topmost: Optional[str]) -> None:
    """The folders this call made, innermost first, up to `topmost`, each only while empty (another process's
    download, or the user's files put there meanwhile, keep theirs)."""
    if topmost is None:
        return
    while True:
        try:
            os.rmdir(folder)
        except OSError:
            return
        if folder == topmost:
            return
        folder = os.path.dirname(folder)


def _check_found(folder: str, path: str, checksum: str) -> None:
    """A file found in place (the user's, or an earlier run's) is refused if it is not the published one, not removed."""
    found = md5(path)
    if found != checksum:
        raise DataError("data.root", folder, f"{path} is already there with md5 {found}, not the published "
                        f"{checksum}; it was left as it is (allowed: the published file there; move it away so "
                        f"gradexp downloads a fresh copy, or point data.root at another folder)")


def _download(url: str, name: str, path: str, checksum: str, timeout: float) -> None:
    """Into a temporary file of our own next to path, renamed to path only once its md5 is the published one:
    an interrupted or wrong download never looks like a finished file, and no other file is ever written."""
    handle, part = _new_part(path)
    try:
        out = _Writing(os.fdopen(handle, "wb"), path)
        try:
            _receive(f"{url.rstrip('/')}/{name}", out, path, timeout)
        finally:
            out.close()
        found = md5(part)
        if found != checksum:
            raise DataError("data.url", url, f"{name} as downloaded has md5 {found}, not the published {checksum}; "
                            f"the download was discarded (allowed: a data.url that serves the published files; run "
                            f"again, or use another mirror)")
        os.replace(part, path)
    except BaseException:  # Ctrl-C included: the temporary file is ours, from this attempt
        os.remove(part)
        raise


class NoRoom(DataError):
    """The download could not be written where it goes (a full disk, a quota, a read-only cache): not the address's
    fault, so it names data.root and what the system said, not data.url."""

    def __init__(self, path: str, err: OSError):
        super().__init__("data.root", os.path.dirname(path), f"cannot write {os.path.basename(path)} there "
                         f"({err.strerror or err}); the partial download was removed (allowed: a folder with room "
                         f"for the dataset, or the file put there by hand)")


class _Writing:
    """The temporary file of a download, whose write errors become NoRoom: _receive turns every OSError while it
    reads the response into Unreachable (no network), which a full disk is not."""

    def __init__(self, out, path: str) -> None:
        self.out, self.path = out, path

    def write(self, block: bytes) -> None:
        try:
            self.out.write(block)
        except OSError as err:
            raise NoRoom(self.path, err) from None

    def close(self) -> None:
        try:
            self.out.close()  # writes what is buffered
        except OSError as err:
            raise NoRoom(self.path, err) from None


def _receive(source: str, out, path: str, timeout: float) -> None:
    try:
        with urllib.request.urlopen(source, timeout=timeout) as response:
            _copy(response, out, os.path.basename(path), _length(response))
    except (urllib.error.URLError, socket.timeout, ConnectionError, OSError, http.client.HTTPException) as err:
        # HTTPException: a reply that is not HTTP (BadStatusLine) or ends early (IncompleteRead)
        raise Unreachable(source, getattr(err, "reason", None) or first_line(err), path) from None


def _new_part(path: str) -> tuple[int, str]:
    """A new file beside path, `.NAME.<random>.part`, created by this call (O_EXCL: never someone else's file or link),
    mode 0o666 less the umask like any download (a shared cache stays readable to its other users)."""
    folder, name = os.path.split(path)
    while True:
        part = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.part")
        try:
            return os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666), part
        except FileExistsError:
            continue


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
