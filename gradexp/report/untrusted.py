"""Reading a run folder that gradexp did not necessarily write (design.md: a run folder read back is untrusted input).
Only regular files are read, never through a symlink, never past a size cap: summary.json could be a link to
/dev/zero (memory), a FIFO (a read that never returns) or a link to a file outside the folder. Text from a run folder
is made printable before it reaches a terminal: an ESC in a status would otherwise drive the user's terminal."""
from __future__ import annotations

import errno
import os
import stat
import unicodedata
from typing import Optional

MEGABYTE = 1 << 20
# control characters, format characters (bidi overrides reorder what is shown), line and paragraph separators
UNPRINTABLE = {"Cc", "Cf", "Cs", "Zl", "Zp"}


class Unreadable(ValueError):
    """A run folder's file that cannot be read, or whose content is not what gradexp writes; the message is one
    line that names the file and what is wrong."""


def read_text(path: str, limit: int) -> Optional[str]:
    """The text of the regular file at `path` (at most `limit` bytes), None where there is none."""
    name = printable(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # NONBLOCK: opening a FIFO does not wait
    except FileNotFoundError:
        return None
    except OSError as err:
        reason = "is a symbolic link" if err.errno == errno.ELOOP else f"cannot be read ({err.strerror})"
        raise Unreadable(f"{name} {reason} (allowed: a regular file)") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO, a device, a folder
        os.close(fd)
        raise Unreadable(f"{name} is not a regular file (allowed: a regular file)")
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(limit + 1)
        except OSError as err:
            raise Unreadable(f"{name} cannot be read ({err.strerror})") from None
    if len(data) > limit:
        raise Unreadable(f"{name} is larger than {limit // MEGABYTE} MB (allowed: at most {limit // MEGABYTE} MB; "
                         f"gradexp writes far smaller ones)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise Unreadable(f"{name} is not UTF-8 text (byte {err.start})") from None


def printable(text: str) -> str:
    """`text` with every control character written as its escape ('\\x1b', '\\n'), so it prints as what it is."""
    if text.isprintable():  # the common case, at C speed
        return text
    return "".join(c.encode("unicode_escape").decode("ascii") if unicodedata.category(c) in UNPRINTABLE else c
                   for c in text)


def one_line(err: BaseException) -> str:
    """An exception's message on one line (YAML's and JSON's span several)."""
    return " ".join(str(err).split()) or type(err).__name__
