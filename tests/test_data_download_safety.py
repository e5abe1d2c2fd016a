"""The download cache removes and replaces only what this invocation created: a wrong file already in place is
refused and left, a download goes through a temporary file of its own, and the lock file goes with its creator
while the lock keeps two jobs from downloading the same file at once. Served from 127.0.0.1, no outside network."""
import fcntl
import hashlib
import errno
import os
import stat
import threading
import time

import pytest

from gradexp.data import download as data_download
from gradexp.data import images as data_images
from gradexp.data.download import DataError, fetch, locked, md5
from gradexp.data.tasks import make_task
from tests.realdata import mnist_arrays, serve, write_mnist

CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens there


@pytest.fixture
def served_blob(tmp_path):
    """(url, requests, md5): one file of random bytes on a local server."""
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "blob.bin").write_bytes(os.urandom(100_000))
    with serve(str(tmp_path / "srv")) as (url, requests):
        yield url, requests, md5(str(tmp_path / "srv" / "blob.bin"))


def _contents(folder):
    return {name: (folder / name).read_bytes() for name in os.listdir(folder)}


def test_a_wrong_file_in_place_is_refused_in_one_line_and_left_as_it_is(tmp_path, monkeypatch):
    write_mnist(str(tmp_path / "srv"), mnist_arrays())
    sums = {f: md5(str(tmp_path / "srv" / f)) for f in data_images._MNIST_FILES}
    monkeypatch.setitem(data_images.SOURCES, "mnist", data_images.Source(CLOSED, sums))
    mine = tmp_path / "root" / "mnist"
    mine.mkdir(parents=True)
    for name in data_images._MNIST_FILES:
        (mine / name).write_bytes(b"the user's own bytes")
    before = _contents(mine)
    with serve(str(tmp_path / "srv")) as (url, requests), pytest.raises(DataError) as err:
        make_task("mnist", 0, root=str(tmp_path / "root"), url=url)
    message, first = str(err.value), data_images._MNIST_FILES[0]
    assert "\n" not in message and message.startswith(f"data.root={mine}: {mine / first} is already there")
    assert f"md5 {md5(str(mine / first))}, not the published {sums[first]}" in message
    assert "left as it is" in message and "move it away" in message and "data.url" not in message
    assert _contents(mine) == before and requests == []  # nothing removed, nothing downloaded, no .lock left


@pytest.mark.parametrize("kind", ["folder", "dangling link"])
def test_something_other_than_a_file_in_place_is_refused_and_left(tmp_path, served_blob, kind):
    url, requests, want = served_blob
    (tmp_path / "c").mkdir()
    there = tmp_path / "c" / "blob.bin"
    there.mkdir() if kind == "folder" else there.symlink_to(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"^data\.root=.*blob\.bin is there but is not a file; it was left as it is"):
        fetch(str(tmp_path / "c"), "blob.bin", url, want, 5)
    assert (there.is_dir() if kind == "folder" else there.is_symlink()) and requests == []
    assert os.listdir(tmp_path / "c") == ["blob.bin"]


@pytest.mark.parametrize("right", [True, False])
def test_a_users_file_named_like_the_partial_download_is_never_touched(tmp_path, served_blob, right):
    url, _, want = served_blob
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "blob.bin.part").write_bytes(b"the user's")
    if right:
        assert md5(fetch(str(tmp_path / "c"), "blob.bin", url, want, 5)) == want
    else:
        with pytest.raises(DataError, match="blob.bin as downloaded has md5 .* the download was discarded"):
            fetch(str(tmp_path / "c"), "blob.bin", url, "0" * 32, 5)
    assert (tmp_path / "c" / "blob.bin.part").read_bytes() == b"the user's"
    assert sorted(os.listdir(tmp_path / "c")) == (["blob.bin", "blob.bin.part"] if right else ["blob.bin.part"])


def test_an_interrupted_download_leaves_no_temporary_file(tmp_path, served_blob, monkeypatch):
    url, _, want = served_blob

    def interrupted(response, out, label, total):
        out.write(response.read(1000))
        raise KeyboardInterrupt

    monkeypatch.setattr(data_download, "_copy", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch(str(tmp_path / "c"), "blob.bin", url, want, 5)
    assert not (tmp_path / "c").exists()  # nor the folder this call made


def test_a_refused_download_leaves_no_folder_it_made_and_keeps_the_users(tmp_path):
    """Found by a new user: offline, data=mnist data.root=cache was refused in one line but left an empty
    cache/mnist/ that had not been there."""
    with pytest.raises(DataError):
        fetch(str(tmp_path / "cache" / "mnist"), "blob.bin", CLOSED, "0" * 32, 1.0)
    assert os.listdir(tmp_path) == []
    (tmp_path / "mine").mkdir()
    with pytest.raises(DataError):
        fetch(str(tmp_path / "mine" / "mnist"), "blob.bin", CLOSED, "0" * 32, 1.0)
    assert os.listdir(tmp_path) == ["mine"] and os.listdir(tmp_path / "mine") == []


def test_a_download_gets_the_mode_the_umask_gives(tmp_path, served_blob):
    url, _, want = served_blob
    old = os.umask(0o027)
    try:
        path = fetch(str(tmp_path / "c"), "blob.bin", url, want, 5)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640  # not the temporary file's 0600


def test_a_lock_gradexp_did_not_create_is_waited_for_and_left(tmp_path, served_blob):
    url, requests, want = served_blob
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / ".lock").write_bytes(b"another job's")
    got = []
    with open(tmp_path / "c" / ".lock", "rb") as held:  # another process's live lock
        fcntl.flock(held, fcntl.LOCK_EX)
        job = threading.Thread(target=lambda: got.append(fetch(str(tmp_path / "c"), "blob.bin", url, want, 60)))
        job.start()
        time.sleep(0.5)
        assert job.is_alive() and requests == []  # waits for the lock
        fcntl.flock(held, fcntl.LOCK_UN)
    job.join(60)
    assert got and requests == ["/blob.bin"]
    assert (tmp_path / "c" / ".lock").read_bytes() == b"another job's"


def test_a_waiter_whose_lock_file_was_removed_locks_afresh(tmp_path):
    (tmp_path / "c").mkdir()
    lock, seen = tmp_path / "c" / ".lock", []

    def job():
        with locked(str(tmp_path / "c")):
            seen.append(lock.exists())  # holds the lock on the file that is there, not on a removed one

    with open(lock, "wb") as held:  # another gradexp's, which it removes before it unlocks
        fcntl.flock(held, fcntl.LOCK_EX)
        waiter = threading.Thread(target=job)
        waiter.start()
        time.sleep(0.3)
        os.remove(lock)
    waiter.join(30)
    assert seen == [True] and os.listdir(tmp_path / "c") == []


def test_the_lock_excludes_while_its_file_comes_and_goes(tmp_path):
    (tmp_path / "c").mkdir()
    inside, most = [0], [0]

    def job():
        for _ in range(30):
            with locked(str(tmp_path / "c")):
                inside[0] += 1
                most[0] = max(most[0], inside[0])
                time.sleep(0.0005)
                inside[0] -= 1

    threads = [threading.Thread(target=job) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert most == [1] and os.listdir(tmp_path / "c") == []


def test_a_lock_that_cannot_be_opened_is_refused_in_one_line(tmp_path, served_blob):
    url, requests, want = served_blob
    (tmp_path / "c" / ".lock").mkdir(parents=True)
    with pytest.raises(DataError, match=r"^data\.root=.*: cannot lock .*\.lock \(.*\); allowed: "):
        fetch(str(tmp_path / "c"), "blob.bin", url, want, 5)
    assert requests == [] and os.listdir(tmp_path / "c") == [".lock"]


@pytest.mark.slow
def test_cli_with_wrong_files_in_place_exits_2_and_keeps_them(tmp_path):
    import subprocess
    import sys

    mine = tmp_path / "mroot" / "mnist"
    mine.mkdir(parents=True)
    for name in data_images._MNIST_FILES:
        (mine / name).write_bytes(b"not mnist")
    done = subprocess.run([sys.executable, "-m", "gradexp", "run", "model=cnn", "data=mnist", "data.root=mroot",
                           f"data.url={CLOSED}/", "train.steps=5"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "is already there with md5" in done.stderr and "left as it is" in done.stderr
    assert sorted(os.listdir(mine)) == sorted(data_images._MNIST_FILES)  # kept, and no .lock left
    assert all((mine / name).read_bytes() == b"not mnist" for name in data_images._MNIST_FILES)


def test_a_fifo_named_lock_is_refused_in_one_line_not_waited_on(tmp_path):
    """Opening a FIFO for writing blocks until a reader comes: the .lock is opened without blocking and must be a
    regular file."""
    import signal

    from gradexp.data.download import DataError, locked

    os.mkfifo(tmp_path / ".lock")
    signal.alarm(20)  # a hang fails the test instead of the suite
    try:
        with pytest.raises(DataError) as err:
            with locked(str(tmp_path)):
                pass
    finally:
        signal.alarm(0)
    assert "\n" not in str(err.value) and ".lock" in str(err.value)


def test_a_file_in_place_is_checked_without_the_lock(tmp_path, monkeypatch):
    """A shared dataset folder the user cannot write (no .lock can be made there) still serves its files: a file in
    place is renamed there whole, so its check needs no lock."""
    (tmp_path / "blob.bin").write_bytes(b"published")
    checksum = hashlib.md5(b"published").hexdigest()

    def no_lock(folder):
        raise AssertionError("locked a folder whose file was already there")

    monkeypatch.setattr(data_download, "locked", no_lock)
    assert fetch(str(tmp_path), "blob.bin", "http://127.0.0.1:9", checksum, 1.0) == str(tmp_path / "blob.bin")
    assert os.listdir(tmp_path) == ["blob.bin"]


def _full_disk_after(limit: int):
    """os.fdopen whose files take `limit` bytes, then fail as a full disk does."""
    real = os.fdopen

    def fdopen(handle, *args, **kwargs):
        f = real(handle, *args, **kwargs)
        written = [0]
        write = f.write

        def limited(block):
            if written[0] + len(block) > limit:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written[0] += len(block)
            return write(block)

        f.write = limited
        return f

    return fdopen


def test_a_full_disk_during_a_download_names_the_folder_not_the_address(tmp_path, served_blob, monkeypatch):
    """ENOSPC while writing is the cache folder's problem: refused as data.root with what the system said, the
    partial download removed, never blamed on data.url as 'cannot download'."""
    url, _, want = served_blob
    (tmp_path / "c").mkdir()
    monkeypatch.setattr(os, "fdopen", _full_disk_after(30_000))
    with pytest.raises(DataError) as err:
        fetch(str(tmp_path / "c"), "blob.bin", url, want, 5)
    message = str(err.value)
    assert message.startswith(f"data.root={tmp_path / 'c'}: cannot write blob.bin there (No space left on device)")
    assert "data.url" not in message and "\n" not in message
    assert os.listdir(tmp_path / "c") == []


def test_a_real_full_tmpfs_during_a_download(tmp_path, served_blob):
    from tests.test_user_owns import tmpfs

    url, _, want = served_blob
    with tmpfs(tmp_path / "small", "size=48k"):  # the served blob is 100 kB
        refused = r"^data\.root=.*: cannot write blob\.bin there \(No space left on device\)"
        with pytest.raises(DataError, match=refused):
            fetch(str(tmp_path / "small"), "blob.bin", url, want, 5)
        assert os.listdir(tmp_path / "small") == []


@pytest.mark.parametrize("reply", [b"\x00\x01garbage, not HTTP\r\n\r\n",
                                   b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\nabc\r\n"])
def test_a_reply_that_is_not_http_is_refused_in_one_line(tmp_path, reply):
    """A server answering garbage (BadStatusLine) or a broken chunked body (IncompleteRead): the address's fault,
    one line naming data.url, no temporary file left; not a traceback."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)

    def answer():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(reply)
            conn.close()

    threading.Thread(target=answer, daemon=True).start()
    try:
        with pytest.raises(DataError, match=r"^data\.url=http://127\.0\.0\.1:\d+/blob\.bin: cannot download \(") as err:
            fetch(str(tmp_path / "c"), "blob.bin", f"http://127.0.0.1:{server.getsockname()[1]}", "0" * 32, 5)
    finally:
        server.close()
    assert "\n" not in str(err.value) and not (tmp_path / "c").exists()


def test_a_data_root_that_cannot_be_made_is_refused_naming_it(tmp_path, served_blob):
    url, requests, want = served_blob
    (tmp_path / "afile").write_text("the user's")
    with pytest.raises(DataError, match=r"^data\.root=.*afile/cache: cannot create it \(Not a directory"):
        fetch(str(tmp_path / "afile" / "cache"), "blob.bin", url, want, 5)
    assert (tmp_path / "afile").read_text() == "the user's" and requests == []
