"""What the apps share: runtime flags, the request check, exit codes.

mamlpp-train, -evaluate, -export, -predict and -benchmark first check the
request inside `checking_request()`, and write only after it: a refused
request writes nothing (but the data cache that mamlpp-train may have
prepared, --tfds_data_dir), and an error once the work has started is a
failure, never a refusal. (mamlpp-benchmark writes no run directory: it
refuses contradictory flags with exit 2 like the others.)

Exit codes of every app:
  0    done.
  1    absl rejected the command line (an unknown flag, a missing flagfile
       or required flag, a value out of a flag's range): its usage message.
       Or the app failed after accepting the request: training diverged
       (`max_nonfinite_steps` skipped meta-steps in a row), none of the
       checkpoints can be read or the top-k store cannot, an I/O or an
       internal error: the traceback, then one `error:` line that says
       what to do.
  2    a refused request, in one `error:` line, nothing written: settings
       that contradict each other or the strategy (a meta-batch that does
       not split over the replicas); missing or unusable data (train); a
       workdir whose config.json is invalid; a workdir that is not a
       folder, holds another experiment or has trained more epochs than
       --total_epochs (train), or that is not a run directory or has no
       validated epoch yet (evaluate, export; no checkpoint for export
       --weights=latest); a non-empty export dir (export); a model,
       support or query set or output path that the request cannot use
       (predict).
  130  stopped by SIGINT; 143 stopped by SIGTERM (128 + the signal). The
       training app saved a checkpoint first: rerun the same command.
"""

import contextlib
import logging as std_logging
import os
import signal
import sys
import traceback

# TensorFlow's C++ INFO lines drown the progress lines; keep its warnings.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
# Before TensorFlow loads: it reads its allocator settings only once.
try:
    from mamlpp_tf_scripts import _cpu_allocator
except ImportError:  # Run as `python scripts/<app>.py`.
    import _cpu_allocator
CPU_ALLOCATOR_NOTE = _cpu_allocator.configure()

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

import mamlpp_tf  # noqa: E402
from mamlpp_tf import checkpointing  # noqa: E402
from mamlpp_tf import distribute  # noqa: E402
from mamlpp_tf import stop_signals  # noqa: E402

EXIT_FAILED = 1
EXIT_BAD_REQUEST = 2
# Shells report a process stopped by signal N as 128 + N.
SIGNAL_EXIT_BASE = 128


def define_runtime_flags():
    """Defines the flags of `distribute.RuntimeConfig`, for the apps that run
    meta-steps: where and how they run, never what they compute.

    Returns:
      A function () -> `distribute.RuntimeConfig` to call after parsing.
    """
    strategy = flags.DEFINE_enum(
        "strategy",
        "default",
        distribute.STRATEGIES,
        "tf.distribute strategy: default (one device), one_device, "
        "mirrored (local GPUs or logical CPUs), multi_worker (cluster from "
        "TF_CONFIG) or tpu (with --tpu).",
    )
    tpu = flags.DEFINE_string(
        "tpu",
        None,
        "With --strategy=tpu: the TPU's name or grpc:// address ('local' on "
        "a TPU VM).",
    )
    logical_cpu_devices = flags.DEFINE_integer(
        "logical_cpu_devices",
        None,
        "Split the CPU into this many logical devices, so that "
        "--strategy=mirrored can run on a laptop (unset: leave it whole).",
        lower_bound=1,
    )
    jit_compile = flags.DEFINE_bool(
        "jit_compile",
        False,
        "Compile each meta-step, outer tape included, with XLA.",
    )
    mixed_precision = flags.DEFINE_enum(
        "mixed_precision",
        "none",
        ("none", "bfloat16"),
        "bfloat16: convolutions and matmuls in bfloat16; variables, "
        "fast-weight arithmetic, LSLR rates, BN statistics and the loss stay "
        "float32.",
    )
    parallel_tasks = flags.DEFINE_integer(
        "parallel_tasks",
        None,
        "Tasks of a meta-batch in flight at once on each replica (unset: 2 "
        "for images of up to 32x32 pixels, e.g. Omniglot, 1 for larger ones, "
        "e.g. mini-ImageNet, whose convolutions use every core: 2 there is "
        "9-16% faster for 18% (1-shot) to 150% (5-shot) more memory; see "
        "docs/benchmarks.md).",
        lower_bound=1,
    )
    intra_op_threads = flags.DEFINE_integer(
        "intra_op_threads",
        None,
        "Threads per TensorFlow op (unset: the CPUs this process may use, "
        "its affinity mask capped by a cgroup CPU quota, / --parallel_tasks "
        "on a host without GPUs; TensorFlow's default otherwise).",
        lower_bound=1,
    )
    per_step_accuracy = flags.DEFINE_bool(
        "per_step_accuracy",
        False,
        "Score the query set after every inner step (TensorBoard's "
        "per_step_accuracy). Off, as in the authors' code, the query set runs "
        "only where its loss counts: faster, same meta-gradients.",
    )
    fused_batch_norm = flags.DEFINE_bool(
        "fused_batch_norm",
        False,
        "Batch norm through TensorFlow's fused kernels: 20% faster meta-steps "
        "on mini-ImageNet on CPU; how close their float32 results come to "
        "the authors' depends on the CPU (docs/fidelity.md).",
    )
    separate_query_backward = flags.DEFINE_bool(
        "separate_query_backward",
        True,
        "Differentiate each query loss on its own tape as soon as it is "
        "computed, so that one query pass's activations are alive at a "
        "time: the same meta-gradients with less memory under MSL. false: "
        "through the outer tape, every query pass kept to the end "
        "(docs/backbones.md measures both).",
    )

    def runtime_config() -> distribute.RuntimeConfig:
        precision = mixed_precision.value
        return distribute.RuntimeConfig(
            strategy=strategy.value,
            tpu=tpu.value,
            logical_cpu_devices=logical_cpu_devices.value,
            jit_compile=jit_compile.value,
            mixed_precision=None if precision == "none" else precision,
            parallel_tasks=parallel_tasks.value,
            intra_op_threads=intra_op_threads.value,
            per_step_accuracy=per_step_accuracy.value,
            fused_batch_norm=fused_batch_norm.value,
            separate_query_backward=separate_query_backward.value,
        )

    return runtime_config


class BadRequestError(Exception):
    """A request refused before anything was written (exit 2, one line)."""


@contextlib.contextmanager
def checking_request():
    """The phase of an app that checks the request: it must write nothing.

    A ValueError, FileNotFoundError or FileExistsError raised inside
    refuses the request: it becomes a `BadRequestError` (exit 2, one
    line). The same errors raised after this phase are failures (exit 1,
    with the traceback).
    """
    try:
        yield
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        raise BadRequestError(str(error)) from error


# Failures whose message already says what to do.
_SELF_EXPLAINED = (
    mamlpp_tf.NonFiniteLossError,
    checkpointing.UnreadableCheckpointError,
)
# What to do after any other failure.
DEFAULT_FAILURE_HINT = (
    "The traceback above shows where it failed: fix the cause, then rerun "
    "the same command."
)


def _fail(message: str, code: int):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def failure_summary(error: BaseException, hint: str) -> str:
    """One line: the error's type and first line, then what to do (its
    notes, or `hint` unless its message says it)."""
    lines = str(error).strip().splitlines()
    name = type(error).__name__
    summary = f"{name}: {lines[0]}" if lines else name
    advice = " ".join(getattr(error, "__notes__", ()))
    if not advice and not isinstance(error, _SELF_EXPLAINED):
        advice = hint
    return f"{summary} {advice}".strip()


def _exit_now(code: int) -> None:
    """Exits at once, for a run stopped by a signal after its checkpoint.

    The checkpoint, metrics.csv and the TensorBoard events are written and
    closed by then. What an ordinary exit would still do is tear down the
    training input pipeline, whose destructor waits for its in-flight
    worker threads: 40 s to 2 min measured after SIGTERM on Omniglot, long
    enough for a scheduler's grace period to end in SIGKILL. So the
    interpreter's teardown is skipped; the logs are flushed first.
    """
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run(main, *, failure_hint: str = DEFAULT_FAILURE_HINT):
    """`app.run(main)` with the exit codes of the module docstring.

    Args:
      main: the app's main(argv). It checks the request inside
        `checking_request()` before it writes anything.
      failure_hint: what to do after a failure (exit 1) whose message
        does not say it.
    """

    def guarded_main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        logging.info("%s", CPU_ALLOCATOR_NOTE)
        logging.info(
            "%s", _cpu_allocator.onednn_note(_cpu_allocator.onednn_enabled())
        )
        try:
            return main(argv)
        except BadRequestError as error:
            _fail(str(error), EXIT_BAD_REQUEST)
        except stop_signals.TrainingInterrupted as interrupted:
            logging.warning("%s", interrupted)
            _exit_now(SIGNAL_EXIT_BASE + interrupted.signum)
        except KeyboardInterrupt:
            _fail("interrupted.", SIGNAL_EXIT_BASE + signal.SIGINT)
        except app.UsageError:
            raise
        except Exception as error:  # noqa: BLE001 - reported, exit 1.
            traceback.print_exc()
            _fail(failure_summary(error, failure_hint), EXIT_FAILED)

    # tf.distribute logs every collective and checkpoint shard at INFO: a
    # few lines per evaluation batch under a strategy. Keep its warnings.
    std_logging.getLogger("tensorflow").setLevel(std_logging.WARNING)
    app.run(guarded_main)
