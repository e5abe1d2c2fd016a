"""The memory the refusals compare with (gradexp/training/memory.py): the machine's available memory, capped by what
the process's control groups still allow (a SLURM job's --mem, a container), read from a copy of /proc and /sys."""
from __future__ import annotations

import os

import pytest
import torch

from gradexp.config.schema import ConfigError
from gradexp.training import factory as build
from gradexp.training import limits, memory
from tests.conftest import compose_config

CPU = torch.device("cpu")
GIB = 2 ** 30
UNLIMITED_V1 = "9223372036854771712"  # what cgroup v1 shows for no limit


def machine(tmp_path, cgroup: str, files: dict[str, str], available_kib: int = 64 * 2 ** 20) -> str:
    """A root holding proc/meminfo, proc/self/cgroup and the given files under sys/fs/cgroup/."""
    root = tmp_path / "root"
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/meminfo").write_text(f"MemTotal: {2 * available_kib} kB\nMemAvailable: {available_kib} kB\n")
    (root / "proc/self/cgroup").write_text(cgroup)
    for path, text in files.items():
        (root / "sys/fs/cgroup" / path).parent.mkdir(parents=True, exist_ok=True)
        (root / "sys/fs/cgroup" / path).write_text(text + "\n")
    return str(root)


def test_a_slurm_jobs_limit_on_a_parent_cgroup_caps_the_machines_memory(tmp_path):
    """cgroup v2: the job's cgroup holds the limit, the step's below it has none; the headroom is the job's."""
    root = machine(tmp_path, "0::/system.slice/slurmstepd.scope/job_7/step_0\n", {
        "system.slice/slurmstepd.scope/job_7/memory.max": str(2 * GIB),
        "system.slice/slurmstepd.scope/job_7/memory.current": str(GIB // 2),
        "system.slice/slurmstepd.scope/job_7/step_0/memory.max": "max",
        "system.slice/slurmstepd.scope/job_7/step_0/memory.current": str(GIB // 4),
    })
    assert memory.cgroup_headroom(root) == 2 * GIB - GIB // 2
    assert memory.available_bytes(CPU, root) == 2 * GIB - GIB // 2  # below the machine's 64 GiB


def test_cgroup_v1_memory_controller_and_the_least_headroom_wins(tmp_path):
    root = machine(tmp_path, "5:cpu,cpuacct:/job\n4:memory:/slurm/uid_0/job_9\n0::/\n", {
        "memory/slurm/uid_0/job_9/memory.limit_in_bytes": str(3 * GIB),
        "memory/slurm/uid_0/job_9/memory.usage_in_bytes": str(GIB),
        "memory/slurm/memory.limit_in_bytes": str(10 * GIB),
        "memory/slurm/memory.usage_in_bytes": str(9 * GIB),  # the parent has only 1 GiB left
        "memory/memory.limit_in_bytes": UNLIMITED_V1,
        "memory/memory.usage_in_bytes": str(20 * GIB),
    })
    assert memory.cgroup_headroom(root) == GIB


def test_no_limit_leaves_the_machines_memory(tmp_path):
    unlimited = machine(tmp_path, "0::/user.slice\n",
                        {"user.slice/memory.max": "max", "user.slice/memory.current": "5"})
    assert memory.cgroup_headroom(unlimited) is None
    assert memory.available_bytes(CPU, unlimited) == 64 * GIB
    os.remove(os.path.join(unlimited, "proc/self/cgroup"))  # not in a cgroup hierarchy at all
    assert memory.available_bytes(CPU, unlimited) == 64 * GIB


def test_a_cgroup_already_over_its_limit_has_no_headroom(tmp_path):
    root = machine(tmp_path, "0::/box\n", {"box/memory.max": str(GIB), "box/memory.current": str(GIB + 4096)})
    assert memory.cgroup_headroom(root) == 0


def test_a_model_that_fits_the_machine_but_not_the_job_is_refused(monkeypatch):
    """The refusal users meet under `sbatch --mem`: the config is refused in one line before training, not killed by
    the kernel mid-run."""
    cfg = compose_config(["model.width=512", "model.depth=8"])
    task = build.task(cfg, CPU)
    need = sum(limits.estimate_bytes(cfg, task).values())
    monkeypatch.setattr(memory, "_meminfo_available", lambda root: 1000 * need)
    monkeypatch.setattr(memory, "cgroup_headroom", lambda root="/": need - 1)
    with pytest.raises(ConfigError, match="model.width"):
        limits.check_memory(cfg, task, CPU)
    monkeypatch.setattr(memory, "cgroup_headroom", lambda root="/": None)
    limits.check_memory(cfg, task, CPU)


def test_the_inactive_file_cache_is_not_counted_as_used(tmp_path):
    """A job that read a large dataset: 12 of its 16 GiB charged, 9 GiB of that inactive page cache the kernel drops
    before any OOM kill; the headroom is 13 GiB, as container tools count it."""
    v2 = machine(tmp_path, "0::/job\n", {
        "job/memory.max": str(16 * GIB), "job/memory.current": str(12 * GIB),
        "job/memory.stat": f"anon {2 * GIB}\nfile {10 * GIB}\ninactive_file {9 * GIB}\nactive_file {GIB}",
    })
    assert memory.cgroup_headroom(v2) == 13 * GIB


def test_odd_cgroup_files_mean_no_known_limit_never_a_traceback(tmp_path):
    cases = {
        "non-UTF-8 name": (b"0::/caf\xe9\n", {}),
        "NUL in the path": (b"0::/a\x00b\n", {}),
        "outside the namespace": (b"0::/../../etc\n", {"etc/memory.max": str(GIB), "etc/memory.current": "0"}),
        "v1's -1": (b"4:memory:/j\n", {"memory/j/memory.limit_in_bytes": "-1", "memory/j/memory.usage_in_bytes": "5"}),
        "malformed lines": (b"garbage\n::\n:\n4:memory\n\n0:::::\n", {}),
    }
    for i, (label, (cgroup, files)) in enumerate(cases.items()):
        root = machine(tmp_path / str(i), "", files)
        with open(os.path.join(root, "proc/self/cgroup"), "wb") as f:
            f.write(cgroup)
        assert memory.cgroup_headroom(root) is None, label
        assert memory.available_bytes(CPU, root) == 64 * GIB, label
