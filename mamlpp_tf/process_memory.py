"""Peak private and resident memory of this process, sampled from /proc.

The kernel keeps the high-water mark of a process's resident set (VmHWM,
what `getrusage` reports as ru_maxrss) but not of its two parts:

- file pages: the pages of the shared libraries (and other mapped files)
  the process has touched. They are clean copies of files on disk, shared
  with every process that maps the same library, and the kernel drops them
  under memory pressure without writing anything;
- anonymous (private) pages: the heap, the tensors, the stacks. Only these
  must stay in memory (or go to swap) while the process runs.

TensorFlow's libraries put about 0.37 GB of file pages into the resident
set when imported and PyTorch's about 0.08 GB (docs/benchmarks.md), so peak RSS
compares the sizes of two frameworks' libraries as well as what a meta-step
holds. `PeakSampler` keeps both peaks, read every `interval_seconds` from
/proc/self/statm in a background thread. A sample can miss a peak shorter
than the interval; the sampled resident peak against the kernel's exact
VmHWM shows how much was missed.

The module uses only the standard library, so the authors' PyTorch
benchmark (tools/benchmark_authors.py) loads the same sampler by path
without importing TensorFlow.
"""

import os
import resource
import threading

_STATM = "/proc/self/statm"


def exact_peak_rss_bytes() -> int:
    """The kernel's own high-water mark of the resident set (VmHWM)."""
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def read_statm(path: str = _STATM) -> tuple[int | None, int | None]:
    """(resident bytes, anonymous bytes) now; (None, None) without /proc.

    /proc/PID/statm gives sizes in pages: total, resident, shared (file and
    shared-memory pages of the resident set), then text, lib, data, dirty.
    The anonymous part of the resident set is resident minus shared.
    """
    try:
        with open(path, encoding="ascii") as statm:
            fields = statm.read().split()
    except OSError:
        return None, None
    page = os.sysconf("SC_PAGE_SIZE")
    resident, shared = int(fields[1]), int(fields[2])
    return resident * page, (resident - shared) * page


class PeakSampler:
    """Samples resident and anonymous memory until stopped; keeps the peaks.

    Use as a context manager, or call `start()` and `stop()`. Where
    /proc/self/statm cannot be read (not Linux), `available` is False and
    both peaks are None.
    """

    def __init__(self, interval_seconds: float = 0.005, path: str = _STATM,
                 *, limit_bytes: int | None = None, on_limit=None):
        if interval_seconds <= 0:
            raise ValueError(
                f"interval_seconds must be > 0, got {interval_seconds}."
            )
        self._interval = interval_seconds
        self._path = path
        self._stop = threading.Event()
        self._thread = None
        self.samples = 0
        self.peak_rss_bytes = None
        self.peak_anon_bytes = None
        self.available = read_statm(path)[0] is not None
        # on_limit(rss_bytes) is called once, from the sampling thread, by
        # the first sample whose resident set exceeds limit_bytes.
        self._limit_bytes = limit_bytes
        self._on_limit = on_limit
        self._limit_reached = False

    def sample(self) -> None:
        """Takes one sample now (also called by the background thread)."""
        rss, anon = read_statm(self._path)
        if rss is None:
            return
        self.samples += 1
        self.peak_rss_bytes = max(self.peak_rss_bytes or 0, rss)
        self.peak_anon_bytes = max(self.peak_anon_bytes or 0, anon)
        if (self._limit_bytes is not None and not self._limit_reached
                and rss > self._limit_bytes):
            self._limit_reached = True
            if self._on_limit is not None:
                self._on_limit(rss)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()

    def start(self) -> "PeakSampler":
        if self._thread is not None:
            raise RuntimeError("PeakSampler.start() was already called.")
        self.sample()
        if self.available:
            self._thread = threading.Thread(
                target=self._run, name="peak-memory-sampler", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stops the thread after one last sample."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self.sample()

    def __enter__(self) -> "PeakSampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
