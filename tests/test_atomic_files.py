"""summary.json and checkpoint.pt are replaced through temporary names this process creates (sinks/files.py): a
symlink planted at an old fixed name (`summary.json.tmp`) is never written through, a user's file of that name is
never truncated, and a failed write leaves the previous file and no temporary one."""
from __future__ import annotations

import errno
import os

import pytest

from gradexp.sinks.files import TEMPORARY_MARK, write_atomically
from gradexp.sinks.summary import write_json_atomic
from tests.test_cli_edges import FAST, gradexp


def test_a_planted_symlink_or_a_users_file_at_the_old_temporary_name_is_left_alone(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's own file")
    (tmp_path / "summary.json.tmp").symlink_to(victim)
    (tmp_path / "checkpoint.pt.tmp").write_text("mine")
    write_json_atomic(str(tmp_path / "summary.json"), {"status": "completed"})
    write_atomically(str(tmp_path / "checkpoint.pt"), lambda f: f.write(b"state"), binary=True)
    assert victim.read_text() == "the user's own file" and (tmp_path / "checkpoint.pt.tmp").read_text() == "mine"
    assert (tmp_path / "summary.json").read_text() == '{\n  "status": "completed"\n}\n'
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"state"
    assert not [p for p in os.listdir(tmp_path) if TEMPORARY_MARK in p]


def test_a_symlink_at_the_final_name_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("outside")
    (tmp_path / "summary.json").symlink_to(victim)
    write_json_atomic(str(tmp_path / "summary.json"), {"a": 1})
    assert victim.read_text() == "outside" and not (tmp_path / "summary.json").is_symlink()


def test_a_failed_write_keeps_the_previous_file_names_it_and_leaves_no_temporary_one(tmp_path):
    path = str(tmp_path / "summary.json")
    write_json_atomic(path, {"v": 1})

    def full(f):
        f.write("partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError) as err:
        write_atomically(path, full)
    assert err.value.filename == path  # the user's file, not the hidden temporary name
    assert open(path).read() == '{\n  "v": 1\n}\n' and os.listdir(tmp_path) == ["summary.json"]


def test_the_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_json_atomic(str(tmp_path / "summary.json"), {})
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "summary.json").st_mode & 0o777 == 0o644


@pytest.mark.slow
def test_a_run_into_a_folder_holding_the_users_tmp_files_leaves_them_byte_for_byte(tmp_path):
    run = tmp_path / "mine"
    run.mkdir()
    (run / "summary.json.tmp").write_bytes(b"user data 1")
    (run / "checkpoint.pt.tmp").write_bytes(b"user data 2")
    assert gradexp(tmp_path, *FAST, "train.checkpoint_every=2", "hydra.run.dir=mine").returncode == 0
    assert (run / "summary.json.tmp").read_bytes() == b"user data 1"
    assert (run / "checkpoint.pt.tmp").read_bytes() == b"user data 2"
    assert (run / "summary.json").is_file() and (run / "checkpoint.pt").is_file()
