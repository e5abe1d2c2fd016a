"""A file written whole or not at all, through a temporary name nobody else owns.

summary.json and checkpoint.pt are replaced atomically: written beside their final name, flushed to disk, then
os.replace'd over it, so a crash or a full disk leaves the previous version. The temporary name is made fresh each
time with O_CREAT | O_EXCL | O_NOFOLLOW: a fixed name such as `summary.json.tmp` would write through a symlink
planted there (to a file outside the run folder) and truncate a user's own file of that name, and gradexp removes or
rewrites nothing it did not create (design.md, Behaviour at the edges)."""
from __future__ import annotations

import os
import secrets
from typing import IO, Callable

TEMPORARY_MARK = ".gradexp-tmp-"  # in every temporary name: `.summary.json.gradexp-tmp-1a2b3c4d`


def write_atomically(path: str, write: Callable[[IO], None], binary: bool = False) -> None:
    """write(f) into a new temporary file beside `path`, then that file replaces `path`. On any error (disk full, a
    second Ctrl-C) the temporary file, ours, is removed and `path` is as it was; an OSError names `path`."""
    f = _exclusive(path, "wb" if binary else "w")
    try:
        with f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(f.name, path)  # replaces the name itself: a symlink at `path` is replaced, never followed
    except BaseException as err:
        try:
            os.remove(f.name)
        except OSError:
            pass
        if isinstance(err, OSError) and err.filename in (None, f.name):
            err.filename = path  # the user's file, not our hidden temporary one
        if isinstance(err.__context__, OSError) and err.__context__.filename in (None, f.name):
            err.__context__.filename = path  # torch.save wraps the write's OSError in a RuntimeError
        raise


def _exclusive(path: str, mode: str) -> IO:
    """A new temporary file beside `path`, created by this call (O_EXCL), open for writing. Its mode is 0o666 less the
    umask, as for open(path, "w")."""
    folder, name = os.path.split(path)
    while True:
        tmp = os.path.join(folder, f".{name}{TEMPORARY_MARK}{secrets.token_hex(4)}")
        try:
            return open(tmp, mode, opener=_create_new)
        except FileExistsError:  # someone else's file (or a link) by that name: never touched, try another name
            continue


def _create_new(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
