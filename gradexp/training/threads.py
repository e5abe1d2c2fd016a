"""Torch threads: `train.threads` when set, else the launcher's share of the CPUs, else torch's default.

The thread count changes end-of-training numbers (reductions split differently), so an explicit
`train.threads` wins and every run records the count it used (summary.json perf.torch_threads, HParams).

`hydra/launcher=joblib` runs n_jobs sweep jobs at once in loky worker processes. Loky already exports
OMP_NUM_THREADS=cpu_count//n_jobs to its workers (unless the parent set it), which torch's intra-op pool
honours, but a user's exported OMP_NUM_THREADS (or a machine-sized default) would still oversubscribe, so each
job sets torch's thread count itself: cpus // n_jobs, at least 1. `submitit_*` jobs get `cpus_per_task` threads
when the launcher sets it (SLURM gives each task its own cores); any other job running under SLURM gets
SLURM_CPUS_PER_TASK. Otherwise (the basic launcher, one job at a time) torch's default is left alone."""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional


def available_cpus() -> int:
    """CPUs this process may run on (respects taskset/cgroup affinity where the OS reports it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def threads_per_job(launcher: Any, cpus: int, env: Optional[Mapping[str, str]] = None) -> Optional[int]:
    """Threads one job should use under `launcher` (the hydra.launcher node), None for torch's default."""
    env = os.environ if env is None else env
    target = str(launcher._target_)
    if target.endswith("JoblibLauncher"):
        n_jobs = launcher.n_jobs
        parallel = cpus + 1 + n_jobs if n_jobs < 0 else n_jobs  # joblib: -1 = all CPUs, -2 = all but one, ...
        return max(1, cpus // max(1, parallel))
    if "submitit" in target and launcher.cpus_per_task:
        return int(launcher.cpus_per_task)
    if env.get("SLURM_CPUS_PER_TASK", "").isdigit() and int(env["SLURM_CPUS_PER_TASK"]) >= 1:
        return int(env["SLURM_CPUS_PER_TASK"])  # srun/sbatch: the cores SLURM gave this task
    return None


def configure_threads(launcher: Any) -> Optional[int]:
    """Apply threads_per_job to torch in this job's process; returns the count set (None: left at default)."""
    threads = threads_per_job(launcher, available_cpus())
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return threads


def apply_explicit_threads(threads: Optional[int]) -> None:
    """`train.threads` (validated >= 1) overrides whatever the launcher's share set; null leaves it. More than the
    CPUs this process may use is refused (in the job's own process, so a sweep checked on a login node is judged by
    the machine it runs on): it only slows torch down, and a count such as 100000 crashes it."""
    if threads is not None:
        import torch

        check_count("train.threads", threads, "or null for the launcher's share / torch's default")
        torch.set_num_threads(threads)


def check_count(key: str, value: int, rest: str) -> None:
    """A count of threads or worker processes no larger than the CPUs this process may use."""
    cpus = available_cpus()
    if value > cpus:
        from gradexp.config.schema import ConfigError

        raise ConfigError(key, value, f"at most {cpus}, the CPUs this process may use; {rest}")
