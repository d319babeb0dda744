"""Times a meta-step of a paper configuration on random inputs.

  mamlpp-benchmark --flagfile=flags/maml++_omniglot_5way_1shot.cfg \
      [--phase=train|eval] [--steps=N] [--epoch=E] [--profile_steps=P]
      [--output_json=FILE] [--memory_limit_gb=G]

Reads the same flags as mamlpp-train (the flagfile's data flags are parsed
but no data is read). Prints trace_seconds (trace plus compile: the first
call, which also runs one step, minus a steady step), first_call_seconds,
seconds_per_iteration (median of --steps), iterations_per_second,
peak_rss_bytes, and import_rss_bytes (the process once TensorFlow is
imported, before the model is built: TensorFlow's own share of the peak).

With --memory_limit_gb, a measurement whose resident set passes G GB
(10^9 bytes) is stopped there: it prints and writes (--output_json)
{"memory_limit_exceeded": true, "rss_bytes_when_stopped": ...} with the
configuration, and exits with status 3. Use it to find out whether a
configuration fits a machine's memory without bringing the machine down.
"""

import dataclasses
import json
import os
import pathlib
import sys

from absl import flags

try:  # First: it quiets TensorFlow's C++ logs before TensorFlow loads.
    from mamlpp_tf_scripts import _app
    from mamlpp_tf_scripts import train as train_app
except ImportError:  # Run as `python scripts/benchmark.py`.
    import _app
    import train as train_app

from mamlpp_tf import benchmark

_PHASE = flags.DEFINE_enum("phase", "train", benchmark.PHASES,
                           "Meta-training step or evaluation step.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed iterations.", lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed iterations after the "
                               "first.", lower_bound=0)
_EPOCH = flags.DEFINE_integer(
    "epoch", 0, "Epoch whose MSL weights and derivative order apply.",
    lower_bound=0,
)
_PROFILE_STEPS = flags.DEFINE_integer(
    "profile_steps", 0, "After the timed steps, profile this many more and "
    "print each op type's share of the kernel time.", lower_bound=0)
_OUTPUT_JSON = flags.DEFINE_string("output_json", None,
                                   "Also write the figures here.")
_MEMORY_LIMIT_GB = flags.DEFINE_float(
    "memory_limit_gb", None, "Stop as soon as the resident set passes this "
    "many GB (10^9 bytes), report it and exit with status 3.",
    lower_bound=0.0)
# Exit status of a measurement stopped by --memory_limit_gb.
EXIT_MEMORY_LIMIT = 3
# The benchmark writes nothing to a run directory.
flags.FLAGS.set_default("workdir", "")
# It reads no data either: a dataset that needs --data_dir gets this
# placeholder, which is never opened.
_NO_DATA_DIR = "unused-by-mamlpp-benchmark"


def main(argv):
    del argv  # Checked by _app.run.
    if flags.FLAGS.data_dir is None and flags.FLAGS.dataset != "synthetic":
        flags.FLAGS.data_dir = _NO_DATA_DIR
    with _app.checking_request():  # Contradictory flags: exit 2.
        config = train_app.experiment_config().learner
        bench = benchmark.BenchmarkConfig(
            phase=_PHASE.value, steps=_STEPS.value, warmup=_WARMUP.value,
            epoch=_EPOCH.value, profile_steps=_PROFILE_STEPS.value,
            memory_limit_bytes=(None if _MEMORY_LIMIT_GB.value is None
                                else int(_MEMORY_LIMIT_GB.value * 1e9)),
        )
        runtime = train_app.runtime_config()

    def stop_at_limit(rss_bytes):
        _report({
            "memory_limit_exceeded": True,
            "memory_limit_bytes": bench.memory_limit_bytes,
            "rss_bytes_when_stopped": rss_bytes,
            "device": benchmark.device_name(),
            "runtime": dataclasses.asdict(runtime),
            "config": dataclasses.asdict(config),
        })
        print(f"Stopped: the resident set reached {rss_bytes / 1e9:.2f} GB, "
              f"past --memory_limit_gb={_MEMORY_LIMIT_GB.value}.",
              file=sys.stderr, flush=True)
        # From the sampling thread, in the middle of a TensorFlow call:
        # nothing to clean up, and no exception would reach the main thread.
        os._exit(EXIT_MEMORY_LIMIT)

    figures = benchmark.run_benchmark(config, bench, runtime,
                                      on_memory_limit=stop_at_limit)
    _report(figures)


def _report(figures):
    text = json.dumps(figures, indent=2, sort_keys=True)
    print(text, flush=True)
    if _OUTPUT_JSON.value:
        path = pathlib.Path(_OUTPUT_JSON.value)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def run():
    """The `mamlpp-benchmark` console script."""
    _app.run(main)


if __name__ == "__main__":
    run()
