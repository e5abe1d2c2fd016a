"""Where report.csv and report.png go, and what may be replaced there. gradexp rewrites nothing it did not create
(design.md): a report.csv or report.png that is already there is replaced only when it is a regular file that gradexp
report wrote, known by its content (the CSV's header, the PNG's Software text); a user's own file of that name, or a
symlink planted there (`report.csv -> ~/.bashrc`), is refused before anything is written. Each file is written
whole through a fresh temporary name (O_EXCL, so never an existing file or link), and both are renamed over the old
ones only once both are complete: a failed write leaves no half file and no new CSV beside an old PNG, and the rename
replaces the name itself, never the file a link points to. Output folders the report made are removed again when it
fails (only while empty: what another process put there since stays)."""
from __future__ import annotations

import csv
import io
import os
import secrets
import stat
import struct
from typing import IO, Callable, Optional

from gradexp.report.untrusted import printable

CSV_NAME, PNG_NAME = "report.csv", "report.png"
SOFTWARE = "gradexp report"  # report.png's tEXt Software entry: marks the PNG as ours
# report.csv's header: run, the overrides, then these columns (table.row) up to the evidence at the end
CSV_RESULTS = ("status", "loss/train", "loss/val", "acc/val", "gain", "first/last", "verdict")
HEADER_LIMIT = 1 << 20  # a header with every override of a big sweep fits many times over
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CHUNKS = 64  # matplotlib puts its text chunks right after IHDR; a PNG of ours has a handful before IDAT


def refusal(path: str) -> Optional[str]:
    """Why `path` may not be replaced (one line), None where it is absent or a report gradexp wrote."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"{printable(path)} cannot be checked ({err.strerror})"
    if stat.S_ISLNK(mode):
        why = "is a symbolic link"
    elif not stat.S_ISREG(mode):
        why = "exists and is not a regular file"
    elif not _ours(path):
        why = "exists and was not written by gradexp report"
        if os.path.basename(path) == PNG_NAME:
            why += " (nor is one it wrote before it marked its PNGs, on 2026-11-30)"
    else:
        return None
    return f"{printable(path)} {why} (remove it, or write elsewhere with --out DIR)"


def stage(path: str, fill: Callable[[IO], None], binary: bool = False) -> str:
    """fill(f) into a new temporary file beside `path`; its name once complete (commit() renames it over `path`). On
    any error the temporary file (ours) is removed, `path` is as it was, and the OSError names `path`."""
    f = _new_beside(path, "wb" if binary else "w")
    try:
        with f:
            fill(f)
    except BaseException as err:
        discard([f.name])
        _name_the_target(err, f.name, path)
        raise
    return f.name


def commit(staged: dict[str, str]) -> None:
    """Rename each staged temporary file over its path (path -> temporary name), taking it out of `staged` once it is
    in place: what is left there on an error is still ours to discard. A full disk fails the writes, before any old
    report is replaced; a rename in the folder the files were written to needs no data blocks, so one failing after
    the first succeeded (leaving only report.csv new) is not expected."""
    for path, temporary in list(staged.items()):
        try:
            os.replace(temporary, path)
        except OSError as err:
            _name_the_target(err, temporary, path)
            raise
        del staged[path]


def discard(temporaries) -> None:
    """Remove the temporary files this report made (a commit() may have renamed some away already)."""
    for temporary in temporaries:
        try:
            os.remove(temporary)
        except OSError:
            pass


def _name_the_target(err: BaseException, temporary: str, path: str) -> None:
    if isinstance(err, OSError) and err.filename in (None, temporary):
        err.filename = path  # the report's name, not our hidden temporary one


def make_folders(path: str) -> list[str]:
    """Make the folder `path` and its missing parents, one at a time; the ones this call made, deepest first
    (os.makedirs does not say which it made, and a failed report removes those, and only those, again)."""
    missing, head = [], path.rstrip(os.sep) or path  # 'out/' is 'out'; '/' stays
    while head and not os.path.lexists(head):
        missing.append(head)
        head = os.path.dirname(head)
    made: list[str] = []
    try:
        for folder in reversed(missing):
            try:
                os.mkdir(folder)
            except FileExistsError:  # made meanwhile by another process (or `a/..`): not ours
                if not os.path.isdir(folder):
                    raise
                continue
            made.insert(0, folder)
    except OSError:
        remove_folders(made)
        raise
    return made


def remove_folders(made: list[str]) -> None:
    """rmdir each of the folders make_folders() made, deepest first; one that is no longer empty stays."""
    for folder in made:
        try:
            os.rmdir(folder)
        except OSError:
            pass


def _new_beside(path: str, mode: str) -> IO:
    """A new `.NAME.<random>.tmp` beside `path`, created by this call (O_EXCL: never an existing file or link), mode
    0o666 less the umask as for open(path, "w")."""
    folder, name = os.path.split(path)
    text = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}  # csv writes its own line ends
    while True:
        tmp = os.path.join(folder or ".", f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            return open(tmp, mode, opener=_create_new, **text)
        except FileExistsError:
            continue


def _create_new(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)


def _ours(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # swapped for a FIFO since lstat: no wait
    except OSError:
        return False
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return False
    with os.fdopen(fd, "rb") as f:
        return _our_png(f) if os.path.basename(path) == PNG_NAME else _our_csv(f.readline(HEADER_LIMIT))


def _our_csv(head: bytes) -> bool:
    """The header table.to_csv writes: run, overrides, the result columns in order, ..., evidence."""
    try:
        header = next(csv.reader(io.StringIO(head.decode("utf-8"), newline="")))
    except (UnicodeDecodeError, StopIteration, csv.Error):
        return False
    results = list(CSV_RESULTS)
    starts = [i for i in range(len(header)) if header[i:i + len(results)] == results]
    return header[:1] == ["run"] and header[-1:] == ["evidence"] and bool(starts)


def _our_png(f: IO[bytes]) -> bool:
    """Whether the PNG's text chunks before its image data hold Software = SOFTWARE."""
    if f.read(8) != PNG_SIGNATURE:
        return False
    for _ in range(PNG_CHUNKS):
        head = f.read(8)
        if len(head) < 8:
            return False
        length, kind = struct.unpack(">I4s", head)
        if kind in (b"IDAT", b"IEND"):
            return False
        if kind == b"tEXt" and length <= 1024 and f.read(length) == b"Software\0" + SOFTWARE.encode("latin-1"):
            return True
        f.seek(length + 4 if kind != b"tEXt" or length > 1024 else 4, os.SEEK_CUR)  # skip the data (if unread), CRC
    return False
