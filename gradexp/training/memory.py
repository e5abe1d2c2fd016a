"""How much memory this process may still take: what the refusals of training/limits.py compare a config's needs with.

On an accelerator, its free memory. On the host, the least of what the machine has available (/proc/meminfo
MemAvailable) and what the process's control groups still allow: a SLURM job (`--mem`), a container or a systemd
slice caps the job below the machine's free memory, and a run over that cap is killed by the kernel mid-training
instead of being refused in one line. Every cgroup from the process's own up to the root counts (a limit set on a
parent applies to its children). cgroup v2 (`memory.max`, `memory.current`) and v1 (`memory.limit_in_bytes`,
`memory.usage_in_bytes`) are read; a file that is not there or not readable counts as no limit."""
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
    found = [limit - usage for limit, usage in _limits(root)]
    return max(0, min(found)) if found else None


def _limits(root: str) -> Iterator[tuple[int, int]]:
    """(limit, usage) of each limited memory cgroup of this process, its own and every ancestor's."""
    try:
        with open(os.path.join(root, "proc/self/cgroup")) as f:
            lines = f.read().splitlines()
    except OSError:
        return
    for line in lines:
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "-", "")
        if controllers == "":  # cgroup v2: one unified hierarchy
            base, limit_file, usage_file = "sys/fs/cgroup", "memory.max", "memory.current"
        elif "memory" in controllers.split(","):  # cgroup v1's memory controller
            base, limit_file, usage_file = "sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes"
        else:
            continue
        for folder in _ancestors(os.path.join(root, base), path):
            limit, usage = _number(os.path.join(folder, limit_file)), _number(os.path.join(folder, usage_file))
            if limit is not None and usage is not None:
                yield limit, usage


def _ancestors(base: str, path: str) -> Iterator[str]:
    """base/path, then each parent folder up to base itself."""
    parts = [p for p in path.split("/") if p and p != ".."]
    for n in range(len(parts), -1, -1):
        yield os.path.join(base, *parts[:n])


def _number(path: str) -> Optional[int]:
    """The integer a cgroup file holds; None for 'max', v1's 'no limit' (a value near 2^63), or an unreadable file."""
    try:
        with open(path) as f:
            text = f.read().strip()
        value = int(text)
    except (OSError, ValueError):
        return None
    return None if value >= 2 ** 62 else value
