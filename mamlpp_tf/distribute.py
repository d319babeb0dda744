"""tf.distribute strategies from a frozen runtime configuration.

The strategy is chosen by the app (`--strategy`) and passed down; the
learner creates its variables and optimizer under `strategy.scope()` and
runs each meta-step with `strategy.run`, reducing over the global
meta-batch, so N replicas give the update one device gives on the same tasks.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib

import tensorflow as tf

from mamlpp_tf import cpu_quota
from mamlpp_tf import data as data_lib

log = logging.getLogger(__name__)

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")
MIXED_PRECISION = (None, "bfloat16")
# Under the run directory: the non-chief workers' own checkpoints.
WORKERS_DIR = "workers"


@dataclasses.dataclass(frozen=True, kw_only=True)
class RuntimeConfig:
    """Where and how the meta-steps run; none of it changes the maths.

    Attributes:
      strategy: one of STRATEGIES. "default" is TF's default strategy (one
        device); "mirrored" replicates over the local GPUs (or logical CPUs);
        "multi_worker" reads the cluster from TF_CONFIG; "tpu" connects to
        `tpu`.
      tpu: TPU name or grpc:// address for "tpu" ("local" on a TPU VM).
      logical_cpu_devices: split the CPU into this many logical devices
        (for trying MirroredStrategy on a laptop); None leaves it alone.
      jit_compile: compile each meta-step, outer tape included, with XLA.
      mixed_precision: None, or "bfloat16" to run convolutions and matmuls
        in bfloat16 while variables, fast-weight arithmetic, LSLR rates, BN
        statistics and the loss stay float32.
      parallel_tasks: tasks of a meta-batch in flight at once per replica;
        None: `default_parallel_tasks` of the images, which the apps and
        `train_and_evaluate`, `evaluate_workdir` and the benchmark resolve
        with `resolve_parallel_tasks` (elsewhere None counts as 1).
      intra_op_threads: threads each TensorFlow op may use; None picks
        `cpu_quota.available_cpus() // parallel_tasks` (at least 1) on a
        host without GPUs: the CPUs this process may use (its affinity
        mask, capped by a cgroup CPU quota), not every CPU of the host,
        shared by the tasks in flight (measured fastest on a 2-core CPU,
        see docs/benchmarks.md); TensorFlow's default elsewhere.
      per_step_accuracy: score the query set after every inner step (a
        diagnostic; the authors' code and the default score it only where
        its loss counts, which saves num_steps - 1 query passes per task
        when MSL is off and in evaluation).
      fused_batch_norm: batch norm through TensorFlow's fused kernels:
        faster on large images, less precise in float32 on CPU (see
        docs/benchmarks.md).
      separate_query_backward: differentiate each query loss on its own
        tape, one query pass's activations alive at a time
        (`MetaLearner(separate_query_backward=...)`).
    """

    strategy: str = "default"
    tpu: str | None = None
    logical_cpu_devices: int | None = None
    jit_compile: bool = False
    mixed_precision: str | None = None
    parallel_tasks: int | None = None
    intra_op_threads: int | None = None
    per_step_accuracy: bool = False
    fused_batch_norm: bool = False
    separate_query_backward: bool = True

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"strategy must be one of {STRATEGIES}, got {self.strategy!r}."
            )
        if self.strategy == "tpu" and not self.tpu:
            raise ValueError(
                "strategy='tpu' needs the TPU's name or address: pass "
                "--tpu=local on a TPU VM, or --tpu=grpc://HOST:8470."
            )
        if self.tpu and self.strategy != "tpu":
            raise ValueError(
                f"tpu={self.tpu!r} is only read with strategy='tpu', got "
                f"strategy={self.strategy!r}. Drop --tpu or set "
                "--strategy=tpu."
            )
        if (
            self.logical_cpu_devices is not None
            and self.logical_cpu_devices < 1
        ):
            raise ValueError(
                "logical_cpu_devices must be None or >= 1, got "
                f"{self.logical_cpu_devices}."
            )
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(
                f"mixed_precision must be one of {MIXED_PRECISION}, got "
                f"{self.mixed_precision!r}."
            )
        if self.intra_op_threads is not None and self.intra_op_threads < 1:
            raise ValueError(
                "intra_op_threads must be None (automatic) or >= 1, got "
                f"{self.intra_op_threads}."
            )
        if self.parallel_tasks is not None and self.parallel_tasks < 1:
            raise ValueError(
                "parallel_tasks must be None (automatic) or >= 1, got "
                f"{self.parallel_tasks}."
            )

    @property
    def tasks_in_flight(self) -> int:
        """`parallel_tasks`, with None (not resolved) counted as 1."""
        return self.parallel_tasks or 1


# Images of at most this many pixels (Omniglot's 28x28) run two tasks in
# flight by default, larger ones (mini-ImageNet's 84x84) one. A small
# image's convolutions are too short to keep two threads busy, so two tasks
# with one thread each are much faster; a large image's keep both cores
# busy, and a second task in flight holds a second set of activations for
# the outer backward pass for a small gain. Measured (docs/benchmarks.md):
# mini-ImageNet 5w1s 9.75 s and 3.16 GB with one task, 8.93 s and 3.73 GB
# with two; 5w5s 15.37 s and 4.41 GB with one, 13.31 s and 11.15 GB with
# two, above the authors' 8.26 GB. So the default is one task there.
SMALL_IMAGE_PIXELS = 32 * 32


def default_parallel_tasks(image_shape) -> int:
    """Tasks in flight for images of `image_shape` (H, W, C): 2 or 1."""
    height, width = image_shape[0], image_shape[1]
    return 2 if height * width <= SMALL_IMAGE_PIXELS else 1


def resolve_parallel_tasks(
    runtime: RuntimeConfig, image_shape
) -> RuntimeConfig:
    """`runtime` with parallel_tasks=None replaced by the images' default.

    Call it before `make_strategy`, which sizes the thread pools by it.
    """
    if runtime.parallel_tasks is not None:
        return runtime
    return dataclasses.replace(
        runtime, parallel_tasks=default_parallel_tasks(image_shape)
    )


def configure_devices(runtime: RuntimeConfig) -> None:
    """Splits the CPU into logical devices; call before any TF op runs."""
    if runtime.logical_cpu_devices is None:
        return
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0],
            [tf.config.LogicalDeviceConfiguration()]
            * runtime.logical_cpu_devices,
        )
    except RuntimeError as error:
        raise RuntimeError(
            "logical_cpu_devices must be set before TensorFlow initialises "
            "its devices (before the first op runs)."
        ) from error


def intra_op_threads(runtime: RuntimeConfig) -> int | None:
    """The intra-op thread count `runtime` asks for (None: TF's default)."""
    if runtime.intra_op_threads is not None:
        return runtime.intra_op_threads
    if runtime.tasks_in_flight > 1 and not tf.config.list_physical_devices(
        "GPU"
    ):
        cpus = cpu_quota.available_cpus()
        return max(1, cpus // runtime.tasks_in_flight)
    return None


def _configure_threads(runtime: RuntimeConfig) -> None:
    threads = intra_op_threads(runtime)
    if threads is None:
        return
    current = tf.config.threading.get_intra_op_parallelism_threads()
    if current == threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:
        log.warning(
            "TensorFlow already started with %s intra-op threads; %d were "
            "asked for and are not applied. Build the strategy before any "
            "TensorFlow op runs.",
            current or "its default",
            threads,
        )


def _worker_devices():
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return [d.name for d in gpus]
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def make_strategy(
    runtime: RuntimeConfig | str,
) -> tf.distribute.Strategy:
    """The `tf.distribute.Strategy` that `runtime` (or a strategy name) asks
    for."""
    if isinstance(runtime, str):
        runtime = RuntimeConfig(strategy=runtime)
    configure_devices(runtime)
    _configure_threads(runtime)
    name = runtime.strategy
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(_worker_devices()[0])
    if name == "mirrored":
        devices = _worker_devices()
        log.info("MirroredStrategy over %s", devices)
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "strategy='multi_worker' reads the cluster from the TF_CONFIG "
                "environment variable, which is not set. Set it on every "
                "worker (see BUILD.md)."
            )
        cluster = json.loads(os.environ["TF_CONFIG"])
        log.info("MultiWorkerMirroredStrategy, task %s", cluster.get("task"))
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu=runtime.tpu
    )
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def learner_options(runtime: RuntimeConfig) -> dict:
    """The `MetaLearner` keyword arguments that `runtime` sets (all but the
    strategy, which `make_strategy` builds once per process)."""
    return {
        "jit_compile": runtime.jit_compile,
        "parallel_tasks": runtime.tasks_in_flight,
        "mixed_precision": runtime.mixed_precision,
        "per_step_accuracy": runtime.per_step_accuracy,
        "fused_batch_norm": runtime.fused_batch_norm,
        "separate_query_backward": runtime.separate_query_backward,
    }


def is_chief(strategy: tf.distribute.Strategy | None) -> bool:
    """Whether this process writes the shared files (logs, summaries)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type in ("chief", None) or (
        resolver.task_type == "worker" and resolver.task_id == 0
    )


def worker_directory(
    strategy: tf.distribute.Strategy | None, workdir: str | os.PathLike
) -> pathlib.Path:
    """Where this worker keeps its own checkpoints: `workdir` on the chief,
    `workdir/workers/<task type>_<task id>` on the other workers.

    Every worker of a multi-worker run saves (saving may take part in
    collectives, and each worker resumes from its own copy), but only the
    chief's copy is the run directory's (TensorFlow's multi-worker
    checkpointing pattern).
    """
    workdir = pathlib.Path(workdir)
    if is_chief(strategy):
        return workdir
    resolver = strategy.cluster_resolver
    return workdir / WORKERS_DIR / f"{resolver.task_type}_{resolver.task_id}"


def check_meta_batch_size(
    strategy: tf.distribute.Strategy | None, meta_batch_size: int
) -> None:
    """Raises ValueError unless the meta-batch splits evenly over the
    replicas of `strategy` (each replica takes the same number of tasks)."""
    replicas = 1 if strategy is None else strategy.num_replicas_in_sync
    if meta_batch_size % replicas:
        raise ValueError(
            f"meta_batch_size={meta_batch_size} does not split over "
            f"{replicas} replicas; use a multiple of {replicas} "
            "(--meta_batch_size, and --num_eval_tasks a multiple of it)."
        )


def episode_batches(
    strategy: tf.distribute.Strategy | None,
    class_images,
    episode_config,
    *,
    split: str,
    start_task: int = 0,
    num_tasks: int | None = None,
):
    """Episode batches for `strategy`, each replica getting distinct tasks.

    Global batch b holds tasks start_task + b*T ... + T - 1, as on one
    device; replica r of R gets the r-th consecutive slice of T/R of them,
    so the replicas together see exactly the single-device batch. Each input
    pipeline builds its own dataset (`distribute_datasets_from_function`)
    and keeps the slices of its own replicas; tasks are pure functions of
    their index, so this is deterministic.

    Returns a `tf.data.Dataset` (one replica) or a distributed dataset.
    """
    if strategy is None or strategy.num_replicas_in_sync == 1:
        return data_lib.episode_dataset(
            class_images,
            episode_config,
            split=split,
            start_task=start_task,
            num_tasks=num_tasks,
        )
    replicas = strategy.num_replicas_in_sync
    tasks_per_batch = episode_config.meta_batch_size
    check_meta_batch_size(strategy, tasks_per_batch)
    per_replica = dataclasses.replace(
        episode_config, meta_batch_size=tasks_per_batch // replicas
    )

    # Built in Python, not converted: autograph would rewrite the pipeline's
    # own Python (class constructors included) when TF calls this.
    @tf.autograph.experimental.do_not_convert
    def dataset_fn(context: tf.distribute.InputContext):
        dataset = data_lib.episode_dataset(
            class_images,
            per_replica,
            split=split,
            start_task=start_task,
            num_tasks=num_tasks,
        )
        pipelines = context.num_input_pipelines
        if pipelines == 1:
            return dataset
        # Slice c goes to replica c % R; this pipeline feeds R / P of them.
        replicas_per_pipeline = replicas // pipelines
        pipeline = context.input_pipeline_id
        return (
            dataset.enumerate()
            .filter(
                lambda c, _: (c % replicas) // replicas_per_pipeline == pipeline
            )
            .map(lambda _, batch: batch)
        )

    return strategy.distribute_datasets_from_function(dataset_fn)
