"""Speed and memory of one meta-step on random inputs of the real shapes.

A benchmark, not a test: it prints figures. Inputs are random images and
labels with the configured shapes, so no data set is read.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import platform
import resource
import statistics
import tempfile
import time

import numpy as np
import tensorflow as tf

from mamlpp_tf import config as config_lib
from mamlpp_tf import distribute
from mamlpp_tf import learner as learner_lib
from mamlpp_tf import process_memory
from mamlpp_tf import schedules

PHASES = ("train", "eval")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BenchmarkConfig:
    """What to measure.

    Attributes:
      phase: "train" (meta-update) or "eval" (adapt + score, first order).
      steps: timed iterations after the warm-up; the median is reported.
      warmup: untimed iterations after the first (tracing) call.
      epoch: the epoch whose MSL weights and derivative order apply.
      profile_steps: after the timed steps, run this many more under
        TensorFlow's profiler and report each op type's share of the
        kernel time (0: no profile).
      memory_limit_bytes: None, or stop the measurement as soon as the
        process's resident set exceeds this (see `run_benchmark`).
    """

    phase: str = "train"
    steps: int = 10
    warmup: int = 2
    epoch: int = 0
    profile_steps: int = 0
    memory_limit_bytes: int | None = None

    def __post_init__(self):
        if self.phase not in PHASES:
            raise ValueError(
                f"phase must be one of {PHASES}, got {self.phase!r}."
            )
        if (
            self.steps < 1
            or self.warmup < 0
            or self.epoch < 0
            or self.profile_steps < 0
        ):
            raise ValueError(
                f"steps must be >= 1, and warmup, epoch and profile_steps "
                f">= 0; got {self.steps}, {self.warmup}, {self.epoch}, "
                f"{self.profile_steps}."
            )
        if self.memory_limit_bytes is not None and self.memory_limit_bytes <= 0:
            raise ValueError(
                f"memory_limit_bytes must be > 0 or None, got "
                f"{self.memory_limit_bytes}."
            )


def random_batch(config: config_lib.MetaLearnerConfig, seed: int = 0) -> dict:
    """An episode batch of the configured shapes, random pixels and labels."""
    rng = np.random.default_rng(seed)
    t, n = config.meta_batch_size, config.num_ways

    def labels(per_class):
        return np.tile(
            np.repeat(np.arange(n, dtype=np.int32), per_class), (t, 1)
        )

    def images(per_class):
        return rng.random((t, n * per_class, *config.image_shape), np.float32)

    return {
        "support_x": tf.constant(images(config.num_shots)),
        "support_y": tf.constant(labels(config.num_shots)),
        "query_x": tf.constant(images(config.num_queries)),
        "query_y": tf.constant(labels(config.num_queries)),
    }


def device_name() -> str:
    """The CPU (model, vector extension, cores) or GPU figures were taken on."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"GPU: {details.get('device_name', gpus[0].name)} x{len(gpus)}"
    model, isa = platform.machine(), ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    isa = vector_isa(line.split(":", 1)[1].split())
                if model != platform.machine() and isa:
                    break
    except OSError:
        pass  # Not Linux: the architecture name will do.
    return f"CPU: {model}{f' ({isa})' if isa else ''}, {os.cpu_count()} cores"


def vector_isa(cpu_flags) -> str:
    """The widest x86 vector extension among /proc/cpuinfo's flags, or "".

    Speed figures depend on it (oneDNN picks its kernels by it), so every
    figure names it: "AVX-512" (with " BF16" where present), "AVX2", "AVX".
    """
    cpu_flags = set(cpu_flags)
    if "avx512f" in cpu_flags:
        return "AVX-512" + (" BF16" if "avx512_bf16" in cpu_flags else "")
    for flag, name in (("avx2", "AVX2"), ("avx", "AVX")):
        if flag in cpu_flags:
            return name
    return ""


def _op_time_shares(logdir: str, top: int = 12) -> dict:
    """Kernel time per op type in the profile under `logdir`, as shares.

    Sums the op events of TensorFlow's executor threads (not those of the
    calling thread, nor the executor's per-op wrapper), then returns the
    `top` op types and "other" as fractions of the total, plus the share of
    every convolution kernel together ("all convolutions").
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # Lazy: heavy.

    totals: dict[str, float] = {}
    for path in pathlib.Path(logdir).rglob("*.xplane.pb"):
        space = xplane_pb2.XSpace()
        space.ParseFromString(path.read_bytes())
        for plane in space.planes:
            names = {k: v.name for k, v in plane.event_metadata.items()}
            for line in plane.lines:
                # TensorFlow's own threads (tf_Compute/..., ...) run the
                # kernels; the Python thread's events are the wrappers.
                if not line.name.startswith("tf_"):
                    continue
                for event in line.events:
                    name = names.get(event.metadata_id, "")
                    op_type = name.rsplit(":", 1)[-1]
                    if not op_type or op_type == "Process":
                        continue
                    totals[op_type] = (
                        totals.get(op_type, 0.0) + event.duration_ps * 1e-12
                    )
    total = sum(totals.values())
    if not total:
        return {}
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])
    shares = {k: round(v / total, 4) for k, v in ranked[:top]}
    shares["other"] = round(sum(v for _, v in ranked[top:]) / total, 4)
    shares["all convolutions"] = round(
        sum(v for k, v in totals.items() if "Conv" in k) / total, 4
    )
    return shares


def run_benchmark(
    config: config_lib.MetaLearnerConfig,
    bench: BenchmarkConfig,
    runtime: distribute.RuntimeConfig | None = None,
    log=print,
    on_memory_limit=None,
) -> dict:
    """Times `bench.phase` of `config`; returns the figures as a dict.

    With `bench.memory_limit_bytes`, the sampler thread calls
    `on_memory_limit(rss_bytes)` when the resident set first exceeds the
    limit; the caller decides what to do (`mamlpp-benchmark` writes what
    it knows and exits with status 3). Sampling is every 5 ms, so the
    process can exceed the limit by what it allocates in that time.
    """
    # TensorFlow's own footprint once imported, before anything is built:
    # what a comparison with another framework's peak has to allow for.
    import_rss = process_memory.exact_peak_rss_bytes()
    # The same split of the resident set as the authors' benchmark records
    # (process_memory): private pages apart from shared-library pages.
    _, import_anon = process_memory.read_statm()
    sampler = process_memory.PeakSampler(
        limit_bytes=bench.memory_limit_bytes, on_limit=on_memory_limit,
    ).start()
    try:
        figures = _measure(config, bench, runtime, log, sampler)
    finally:
        sampler.stop()
    return {
        **figures,
        "import_rss_bytes": import_rss,
        # Sampled every few ms (process_memory): the anonymous (private)
        # part of the resident set, without the shared libraries' pages;
        # sampled_peak_rss_bytes against the exact peak_rss_bytes shows
        # what the sampling missed.
        "peak_anon_bytes": sampler.peak_anon_bytes,
        "import_anon_bytes": import_anon,
        "sampled_peak_rss_bytes": sampler.peak_rss_bytes,
    }


def _measure(config, bench, runtime, log, sampler) -> dict:
    runtime = distribute.resolve_parallel_tasks(
        runtime or distribute.RuntimeConfig(), config.image_shape
    )
    strategy = distribute.make_strategy(runtime)
    learner = learner_lib.MetaLearner(
        config, strategy=strategy, **distribute.learner_options(runtime)
    )
    batch = random_batch(config)
    # TensorFlow, the model and the batch, before any step: the floor under
    # peak_rss_bytes that no step-level change can lower.
    setup_rss, _ = process_memory.read_statm()
    if bench.phase == "train":

        def step():
            return learner.train_step(batch, bench.epoch)
    else:

        def step():
            return learner.eval_step(batch)

    start = time.perf_counter()
    step()
    first_call_seconds = time.perf_counter() - start
    # Whether the peak is set while the graph is traced and optimised (a
    # one-off) or by the steady steps.
    first_call_peak_rss = process_memory.exact_peak_rss_bytes()
    sampler.sample()
    first_call_peak_anon = sampler.peak_anon_bytes
    log(
        f"traced and ran the first {bench.phase} step in "
        f"{first_call_seconds:.1f} s"
    )
    for _ in range(bench.warmup):
        step()
    times = []
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    for i in range(bench.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        log(f"  step {i + 1}/{bench.steps}: {times[-1]:.3f} s")
    usage_after = resource.getrusage(resource.RUSAGE_SELF)
    median = statistics.median(times)
    op_shares = None
    if bench.profile_steps:
        with tempfile.TemporaryDirectory() as logdir:
            tf.profiler.experimental.start(logdir)
            for _ in range(bench.profile_steps):
                step()
            tf.profiler.experimental.stop()
            op_shares = _op_time_shares(logdir)
        log(
            "kernel time by op type (profiled steps): "
            + ", ".join(f"{k} {v:.1%}" for k, v in op_shares.items())
        )
    # The first call traces, optimises (Grappler), creates the kernels and
    # runs one step; without that step's run it is the trace plus compile.
    trace_seconds = max(0.0, first_call_seconds - median)
    log(
        f"trace + compile: {trace_seconds:.1f} s (first call "
        f"{first_call_seconds:.1f} s minus a steady step {median:.3f} s)"
    )
    return {
        "phase": bench.phase,
        "epoch": bench.epoch,
        "second_order": bench.phase == "train"
        and schedules.use_second_order(config, bench.epoch),
        "multi_step_loss": bench.phase == "train"
        and schedules.use_multi_step_loss(config, bench.epoch),
        "trace_seconds": round(trace_seconds, 3),
        "first_call_seconds": round(first_call_seconds, 3),
        "seconds_per_iteration": round(median, 4),
        "iterations_per_second": round(1.0 / median, 3),
        "min_seconds_per_iteration": round(min(times), 4),
        # CPU time of the timed steps, per step: "system" is the kernel's
        # share (page faults of freshly mapped memory show up there).
        "cpu_user_seconds_per_iteration": round(
            (usage_after.ru_utime - usage_before.ru_utime) / bench.steps, 4
        ),
        "cpu_system_seconds_per_iteration": round(
            (usage_after.ru_stime - usage_before.ru_stime) / bench.steps, 4
        ),
        "minor_page_faults_per_iteration": round(
            (usage_after.ru_minflt - usage_before.ru_minflt) / bench.steps
        ),
        # The CPU allocator settings TensorFlow started with.
        "allocator_environment": {
            k: v
            for k, v in sorted(os.environ.items())
            if k.startswith(("TF_CPU_", "MALLOC_", "TF_GPU_ALLOCATOR"))
        },
        "peak_rss_bytes": process_memory.exact_peak_rss_bytes(),
        "setup_rss_bytes": setup_rss,
        "first_call_peak_rss_bytes": first_call_peak_rss,
        "first_call_peak_anon_bytes": first_call_peak_anon,
        "steps": bench.steps,
        "device": device_name(),
        "tensorflow_version": tf.__version__,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "runtime": dataclasses.asdict(runtime),
        "config": dataclasses.asdict(config),
        **({} if op_shares is None else {"op_time_shares": op_shares}),
    }
