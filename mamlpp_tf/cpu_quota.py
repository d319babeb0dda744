"""How many CPUs this process may use: its affinity, capped by cgroups.

`os.cpu_count()` counts every CPU of the host. A process pinned to a few
cores (`taskset`, a batch scheduler) or in a container with a CPU quota
(`docker --cpus`, Kubernetes limits) may use fewer; sizing thread pools by
the host then oversubscribes the CPUs it has.
"""

from __future__ import annotations

import math
import os
import pathlib

CGROUP_ROOT = pathlib.Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = pathlib.Path("/proc/self/cgroup")
# cgroup v1 mounts the "cpu" controller here (often a link to cpu,cpuacct).
CGROUP_V1_CPU = "cpu"
# cgroup v2's "no quota" value in cpu.max; v1 writes -1 in cpu.cfs_quota_us.
NO_QUOTA = "max"


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (all CPUs where the OS has no
    affinity call, e.g. macOS)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _memberships(proc_self_cgroup: pathlib.Path) -> dict[str, str]:
    """Controller -> cgroup path of this process; "" keys the v2 cgroup.

    Lines of /proc/self/cgroup read "ID:CONTROLLERS:PATH", e.g.
    "0::/user.slice" (v2) or "3:cpu,cpuacct:/docker/abc" (v1).
    """
    try:
        text = proc_self_cgroup.read_text(encoding="utf-8")
    except OSError:  # Not Linux, or /proc is not mounted.
        return {}
    memberships = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(",") if parts[1] else [""]:
            memberships[controller] = parts[2]
    return memberships


def _folders(base: pathlib.Path, cgroup: str) -> list[pathlib.Path]:
    """`base`/`cgroup` and each of its ancestors up to `base`: a quota on
    any of them limits the process. (Inside a container the path may name
    a host folder that is not mounted; `base` itself is the container's.)
    """
    folder = base / cgroup.strip("/")
    folders = [folder]
    while folder != base:
        folder = folder.parent
        folders.append(folder)
    return folders


def _read(path: pathlib.Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return None


def _v2_limit(folder: pathlib.Path) -> float | None:
    """CPUs allowed by `folder`/cpu.max ("QUOTA PERIOD"), None if unset."""
    text = _read(folder / "cpu.max")
    if not text:
        return None
    quota, _, period = text.partition(" ")
    if quota == NO_QUOTA or not period:
        return None
    return int(quota) / int(period)


def _v1_limit(folder: pathlib.Path) -> float | None:
    """CPUs allowed by cpu.cfs_quota_us / cpu.cfs_period_us, None if unset
    (a quota of -1)."""
    quota = _read(folder / "cpu.cfs_quota_us")
    period = _read(folder / "cpu.cfs_period_us")
    if not quota or not period or int(quota) <= 0:
        return None
    return int(quota) / int(period)


def cgroup_cpu_limit(
    root: pathlib.Path = CGROUP_ROOT,
    proc_self_cgroup: pathlib.Path = PROC_SELF_CGROUP,
) -> float | None:
    """The CPUs the tightest cgroup CPU quota over this process allows.

    Reads cgroup v2's `cpu.max` and cgroup v1's `cpu.cfs_quota_us` /
    `cpu.cfs_period_us` of the process's cgroup and of its ancestors.

    Returns:
      quota / period (e.g. 1.5), or None when no quota applies.
    """
    memberships = _memberships(proc_self_cgroup)
    limits = []
    if "" in memberships:
        limits += [_v2_limit(f) for f in _folders(root, memberships[""])]
    if CGROUP_V1_CPU in memberships:
        limits += [
            _v1_limit(f)
            for f in _folders(root / CGROUP_V1_CPU, memberships[CGROUP_V1_CPU])
        ]
    return min((x for x in limits if x is not None), default=None)


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by the cgroup
    CPU quota rounded up (a quota of 1.5 CPUs keeps 2 threads busy part of
    the time, and a quota below one CPU still runs one thread)."""
    cpus = affinity_cpus()
    limit = cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    return cpus
