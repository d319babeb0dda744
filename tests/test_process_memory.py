"""The peak memory sampler: statm arithmetic, and real allocations.

Sizes are literal: a 256 MiB private buffer must raise the anonymous peak
by about 256 MiB; a 128 MiB file mapping read through must raise the
resident peak by about that much and leave the anonymous peak alone.
"""

import mmap
import os
import sys
import time

import pytest

from mamlpp_tf import process_memory

MIB = 1 << 20
linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="reads /proc/self/statm, which only Linux has",
)


def test_read_statm_splits_resident_into_anonymous_and_shared(tmp_path):
    statm = tmp_path / "statm"
    # total 2000 pages, resident 1500, of them 400 file/shared pages.
    statm.write_text("2000 1500 400 10 0 900 0\n")
    page = os.sysconf("SC_PAGE_SIZE")
    assert process_memory.read_statm(str(statm)) == (1500 * page, 1100 * page)


def test_without_proc_it_reports_nothing_rather_than_zero(tmp_path):
    sampler = process_memory.PeakSampler(path=str(tmp_path / "missing"))
    with sampler:
        pass
    assert sampler.available is False
    assert sampler.peak_rss_bytes is None
    assert sampler.peak_anon_bytes is None


def test_the_limit_callback_fires_once_when_the_resident_set_passes_it(
    tmp_path,
):
    statm = tmp_path / "statm"
    page = os.sysconf("SC_PAGE_SIZE")
    statm.write_text("2000 1000 0 10 0 900 0\n")
    calls = []
    sampler = process_memory.PeakSampler(
        path=str(statm), limit_bytes=1000 * page, on_limit=calls.append,
    )
    sampler.sample()
    assert calls == []  # At the limit, not past it.
    statm.write_text("2000 1001 0 10 0 900 0\n")
    sampler.sample()
    statm.write_text("2000 1500 0 10 0 900 0\n")
    sampler.sample()
    assert calls == [1001 * page]


def test_interval_must_be_positive():
    with pytest.raises(ValueError, match="interval_seconds must be > 0"):
        process_memory.PeakSampler(interval_seconds=0)


@linux_only
def test_a_freed_private_buffer_stays_in_the_anonymous_peak():
    with process_memory.PeakSampler(interval_seconds=0.002) as sampler:
        _, anon_before = process_memory.read_statm()
        buffer = bytearray(b"\x01") * (256 * MIB)  # Every page written.
        time.sleep(0.05)  # Long enough for the thread to see it.
        del buffer
        time.sleep(0.02)
    _, anon_after = process_memory.read_statm()
    assert sampler.samples >= 5
    assert sampler.peak_anon_bytes - anon_before > 240 * MIB
    assert anon_after < sampler.peak_anon_bytes - 200 * MIB  # Freed.
    assert sampler.peak_rss_bytes >= sampler.peak_anon_bytes


@linux_only
def test_file_pages_count_as_resident_but_not_anonymous(tmp_path):
    path = tmp_path / "pages.bin"
    path.write_bytes(b"\x02" * (128 * MIB))
    with open(path, "rb") as f, process_memory.PeakSampler() as sampler:
        rss_before, anon_before = process_memory.read_statm()
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        page = os.sysconf("SC_PAGE_SIZE")
        total = sum(mapped[i] for i in range(0, len(mapped), page))
        sampler.sample()
        mapped.close()
    assert total == 2 * (128 * MIB // page)
    assert sampler.peak_rss_bytes - rss_before > 120 * MIB
    assert sampler.peak_anon_bytes - anon_before < 16 * MIB
