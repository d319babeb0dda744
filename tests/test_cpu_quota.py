"""The CPUs this process may use: affinity mask, cgroup v1/v2 quotas."""

import os

import pytest

from mamlpp_tf import cpu_quota


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def cgroups(tmp_path):
    """(root, /proc/self/cgroup) of a fake cgroup tree."""
    return tmp_path / "sys_fs_cgroup", tmp_path / "proc_self_cgroup"


def test_no_cgroup_information_means_no_limit(cgroups):
    root, proc = cgroups  # Neither exists (not Linux, no /proc).
    assert cpu_quota.cgroup_cpu_limit(root, proc) is None


def test_v2_cpu_max_of_the_process_cgroup(cgroups):
    root, proc = cgroups
    _write(proc, "0::/jobs/mine\n")
    _write(root / "jobs/mine/cpu.max", "150000 100000\n")  # 1.5 CPUs.
    assert cpu_quota.cgroup_cpu_limit(root, proc) == 1.5


def test_v2_the_tightest_ancestor_wins_and_max_is_no_limit(cgroups):
    root, proc = cgroups
    _write(proc, "0::/jobs/mine\n")
    _write(root / "jobs/mine/cpu.max", "max 100000\n")
    _write(root / "jobs/cpu.max", "300000 100000\n")
    _write(root / "cpu.max", "400000 50000\n")  # 8 CPUs: looser.
    assert cpu_quota.cgroup_cpu_limit(root, proc) == 3.0


def test_v2_container_root_applies_when_the_host_path_is_not_mounted(cgroups):
    root, proc = cgroups
    _write(proc, "0::/docker/abc123\n")  # Not under root in the container.
    _write(root / "cpu.max", "50000 100000\n")
    assert cpu_quota.cgroup_cpu_limit(root, proc) == 0.5


def test_v1_cfs_quota_and_unlimited_minus_one(cgroups):
    root, proc = cgroups
    _write(proc, "4:memory:/x\n3:cpu,cpuacct:/batch/job\n0::/\n")
    _write(root / "cpu/batch/job/cpu.cfs_quota_us", "250000\n")
    _write(root / "cpu/batch/job/cpu.cfs_period_us", "100000\n")
    _write(root / "cpu/cpu.cfs_quota_us", "-1\n")
    _write(root / "cpu/cpu.cfs_period_us", "100000\n")
    assert cpu_quota.cgroup_cpu_limit(root, proc) == 2.5
    _write(root / "cpu/batch/job/cpu.cfs_quota_us", "-1\n")
    assert cpu_quota.cgroup_cpu_limit(root, proc) is None


@pytest.mark.parametrize(
    "affinity,limit,expected",
    [
        ({0, 1, 2, 3, 4, 5, 6, 7}, None, 8),
        ({2, 5, 7}, None, 3),  # taskset -c 2,5,7 on a larger host.
        ({0, 1, 2, 3, 4, 5, 6, 7}, 2.0, 2),  # docker --cpus=2.
        ({0, 1, 2, 3, 4, 5, 6, 7}, 1.5, 2),  # Rounded up.
        ({0, 1, 2, 3, 4, 5, 6, 7}, 0.25, 1),
        ({0, 1}, 6.0, 2),  # The affinity is tighter.
    ],
)
def test_available_cpus_is_the_affinity_capped_by_the_quota(
    monkeypatch, affinity, limit, expected
):
    monkeypatch.setattr(
        os, "sched_getaffinity", lambda pid: affinity, raising=False
    )
    monkeypatch.setattr(os, "cpu_count", lambda: 64)  # The whole host.
    monkeypatch.setattr(cpu_quota, "cgroup_cpu_limit", lambda: limit)
    assert cpu_quota.available_cpus() == expected


def test_this_process_counts_at_most_the_host_cpus():
    assert 1 <= cpu_quota.available_cpus() <= (os.cpu_count() or 1)


def test_dataset_preparation_uses_the_same_cpu_count(monkeypatch):
    # Decode workers follow the quota-capped count, not the affinity alone.
    from mamlpp_tf.data import parallel_decode

    monkeypatch.setattr(cpu_quota, "available_cpus", lambda: 3)
    assert parallel_decode.num_decode_workers() == 3
