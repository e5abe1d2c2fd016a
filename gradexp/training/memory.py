"""How much memory this process may still take: what the refusals of training/limits.py compare a config's needs with.

On an accelerator, its free memory. On the host, the least of what the machine has available (/proc/meminfo
MemAvailable) and what the process's control groups still allow: a SLURM job (`--mem`), a container or a systemd
slice caps the job below the machine's free memory, and a run over that cap is killed by the kernel mid-training
instead of being refused in one line. Every cgroup from the process's own up to the root counts (a limit set on a
parent applies to its children). cgroup v2 (`memory.max`, `memory.current`) and v1 (`memory.limit_in_bytes`,
`memory.usage_in_bytes`) are read, and the usage counts as container tools count it, less the inactive file cache
(`memory.stat`), which the kernel drops before it kills anything: a job that has read a large dataset is not refused
for its page cache. A file that is not there or not readable, a value that is not a number, or a cgroup path outside
this process's view (`..`) counts as no limit."""
from __future__ import annotations

import os
from typing import Iterator, Optional

import torch


def available_bytes(dev: torch.device, root: str = "/") -> int:
    """Bytes free for this process on `dev`. `root`: where /proc and /sys are found (tests point it at a copy)."""
    if dev.type == "cuda":
        return torch.cuda.mem_get_info(dev)[0]
    machine = _meminfo_available(root)
    capped = cgroup_headroom(root)
    return machine if capped is None else min(machine, capped)


def _meminfo_available(root: str) -> int:
    try:
        with open(os.path.join(root, "proc/meminfo")) as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):  # not Linux: free physical pages
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def cgroup_headroom(root: str = "/") -> Optional[int]:
    """The least (limit - usage) over the memory cgroups the process is in and their ancestors; None: no limit."""
    try:
        found = [limit - usage for limit, usage in _limits(root)]
    except (OSError, ValueError):  # odd bytes or names anywhere in /proc or /sys: no limit known, never a traceback
        return None
    return max(0, min(found)) if found else None


def _limits(root: str) -> Iterator[tuple[int, int]]:
    """(limit, usage) of each limited memory cgroup of this process, its own and every ancestor's."""
    try:
        with open(os.path.join(root, "proc/self/cgroup"), errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return
    for line in lines:
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "-", "")
        if controllers == "":  # cgroup v2: one unified hierarchy
            base, limit_file, usage_file, cache = "sys/fs/cgroup", "memory.max", "memory.current", "inactive_file"
        elif "memory" in controllers.split(","):  # cgroup v1's memory controller
            base, limit_file, usage_file = "sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes"
            cache = "total_inactive_file"
        else:
            continue
        for folder in _ancestors(os.path.join(root, base), path):
            limit, usage = _number(os.path.join(folder, limit_file)), _number(os.path.join(folder, usage_file))
            if limit is not None and usage is not None:
                yield limit, usage - min(usage, _stat(os.path.join(folder, "memory.stat"), cache))


def _ancestors(base: str, path: str) -> Iterator[str]:
    """base/path, then each parent folder up to base itself; nothing for a path outside this process's view of the
    hierarchy (`..`: a cgroup namespace whose root is below the process's cgroup), whose files it cannot read."""
    parts = [p for p in path.split("/") if p]
    if ".." in parts:
        return
    for n in range(len(parts), -1, -1):
        yield os.path.join(base, *parts[:n])


def _stat(path: str, field: str) -> int:
    """A field of a cgroup's memory.stat (bytes); 0 where it is not there."""
    try:
        with open(path, errors="surrogateescape") as f:
            for line in f:
                name, _, value = line.partition(" ")
                if name == field:
                    return max(0, int(value))
    except (OSError, ValueError):
        pass
    return 0


def _number(path: str) -> Optional[int]:
    """The integer a cgroup file holds; None for 'max', v1's 'no limit' (a value near 2^63), or an unreadable file."""
    try:
        with open(path) as f:
            text = f.read().strip()
        value = int(text)
    except (OSError, ValueError):
        return None
    return None if value >= 2 ** 62 or value < 0 else value  # v1's -1 also means no limit
