"""One gradexp process writes into a run folder at a time.

Two `gradexp run resume=R` started together (a second terminal, a job requeued while the first still runs) would
both continue R: overlapping event files, and summary.json and checkpoint.pt from whichever wrote last. The run holds
an exclusive flock on the folder itself for as long as it writes there (no lock file: nothing is added to the folder,
and the kernel lets go of the lock when the process dies, however it dies, so a killed run never blocks its resume;
forked children such as DataLoader workers close their copy of it). A sweep job holds it from the moment it looks at
its folder (cli/app.py), so a requeued job never moves aside the files of a run still writing there.
Filesystems without flock (some network mounts) run unlocked, as before."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from typing import Iterator

from gradexp.config.schema import ConfigError


class FolderInUse(ConfigError):
    """Another process is writing into the run folder: one line, exit 2."""

    def __init__(self, run_dir: str):
        ValueError.__init__(self, f"{run_dir} is being written by another gradexp process; a run folder takes one "
                                  "run at a time (wait for it to end, or stop it, then resume)")
        self.key, self.value, self.allowed = "hydra.run.dir", run_dir, "a folder no other run is writing into"


_HELD: dict[str, int] = {}  # real path of a run folder this process holds -> the descriptor holding its lock


def _let_go_in_child() -> None:
    """A forked child (a DataLoader worker) shares the parent's open descriptors, and with them the lock: flock lets go
    only when every copy is closed, so a worker outliving its run would keep the folder locked. The child closes its
    copies; the lock stays the parent's alone."""
    for fd in _HELD.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_let_go_in_child)


@contextlib.contextmanager
def sole_writer(run_dir: str) -> Iterator[None]:
    """Hold the run folder for this process while the block runs; FolderInUse at once if another holds it. Nested
    blocks for a folder this process holds already hold nothing more. A folder that does not exist yet has no other
    writer to keep out (it is made inside the block)."""
    if not hold(run_dir):
        yield
        return
    try:
        yield
    finally:
        release(run_dir)


def hold(run_dir: str) -> bool:
    """Take the folder's lock for this process until release(); FolderInUse if another process holds it. False (and
    nothing to release) where this process holds it already or the folder does not exist."""
    key = os.path.realpath(run_dir)
    if key in _HELD:
        return False
    try:
        fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return False
    try:
        _lock(fd, run_dir)
    except BaseException:
        os.close(fd)
        raise
    _HELD[key] = fd
    return True


def release(run_dir: str) -> None:
    fd = _HELD.pop(os.path.realpath(run_dir), None)
    if fd is not None:
        os.close(fd)  # closing the last copy of the descriptor releases the lock


def _lock(fd: int, run_dir: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise FolderInUse(run_dir) from None
        # ENOLCK, EOPNOTSUPP, EBADF: a filesystem without flock on folders; the run goes on unlocked
