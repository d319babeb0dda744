"""Times the authors' PyTorch MAML++ meta-step: the comparator of docs/benchmarks.md.

Runs the meta-step of AntreasAntoniou/HowToTrainYourMAMLPytorch (a checkout
of it, never part of this repository) on random inputs of one of their
experiment configs, and prints the same figures as `mamlpp-benchmark`:

  python tools/benchmark_authors.py --authors_dir=AUTHORS_DIR \
      --config=omniglot_maml++-omniglot_1_8_0.1_64_5_0 \
      [--phase=train|eval] [--epoch=E] [--steps=N] [--warmup=W] \
      [--output_json=FILE]

Needs PyTorch (CPU) and numpy, not TensorFlow. Their configs are named
`<dataset>_<method>-<dataset>_<shots>_<meta batch>_<inner lr>_<filters>_
<ways>_<seed>`. Their model is built exactly as their `train_maml_system.py`
builds it (their own argument parsing of the config), and one iteration is
their `run_train_iter(batch, epoch)` (train: inner loop, loss, backward,
Adam) or `run_validation_iter(batch)` (eval), as their `ExperimentBuilder`
calls them. MSL applies while `epoch < multi_step_loss_num_epochs`, so
`--epoch=20` times training without MSL, as `mamlpp-benchmark --epoch=20`
does. Timing and memory: the median of `--steps` iterations after the first
(untimed) and `--warmup` more; peak RSS is the process's high-water mark,
and peak_anon_bytes its private part without the shared libraries' pages,
sampled as ours samples it (mamlpp_tf/process_memory.py).
"""

import importlib.util
import json
import os
import pathlib
import platform
import statistics
import time

from absl import app
from absl import flags

import authors_code  # tools/authors_code.py, beside this file.

_AUTHORS_DIR = flags.DEFINE_string(
    "authors_dir",
    None,
    "A checkout of HowToTrainYourMAMLPytorch.",
    required=True,
)
_CONFIG = flags.DEFINE_string(
    "config",
    None,
    "The name of one of their experiment_config/*.json.",
    required=True,
)
_PHASE = flags.DEFINE_enum(
    "phase",
    "train",
    ("train", "eval"),
    "run_train_iter or run_validation_iter.",
)
_EPOCH = flags.DEFINE_integer(
    "epoch", 0, "Epoch passed to run_train_iter.", lower_bound=0
)
_STEPS = flags.DEFINE_integer("steps", 5, "Timed iterations.", lower_bound=1)
_WARMUP = flags.DEFINE_integer(
    "warmup", 1, "Untimed iterations after the first.", lower_bound=0
)
_OUTPUT_JSON = flags.DEFINE_string(
    "output_json", None, "Also write the figures here."
)


def _random_batch(args, seed: int = 0):
    """Their batch layout: x [B, N, K, C, H, W], y [B, N, K]."""
    import numpy as np

    rng = np.random.default_rng(seed)
    b, n = args.batch_size, args.num_classes_per_set
    shape = (args.image_channels, args.image_height, args.image_width)

    def labels(per_class):
        return np.tile(np.arange(n)[:, None], (b, 1, per_class))

    def images(per_class):
        return rng.random((b, n, per_class, *shape), dtype=np.float32)

    k, q = args.num_samples_per_class, args.num_target_samples
    return images(k), images(q), labels(k), labels(q)


def _cpu_name() -> str:
    """The model name and widest vector extension, as mamlpp-benchmark's."""
    model, isa = platform.machine(), ""
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not isa:
                flags_ = set(line.split(":", 1)[1].split())
                if "avx512f" in flags_:
                    isa = "AVX-512" + (
                        " BF16" if "avx512_bf16" in flags_ else ""
                    )
                else:
                    isa = "AVX2" if "avx2" in flags_ else ""
    return f"{model} ({isa})" if isa else model


def _load_process_memory():
    """mamlpp_tf/process_memory.py, loaded by path: the package imports
    TensorFlow, which this Python need not have (the module itself uses only
    the standard library)."""
    path = (
        pathlib.Path(__file__).resolve().parent.parent
        / "mamlpp_tf"
        / "process_memory.py"
    )
    spec = importlib.util.spec_from_file_location("_process_memory", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    authors_dir = pathlib.Path(_AUTHORS_DIR.value).expanduser().resolve()
    config_path = authors_code.config_path(authors_dir, _CONFIG.value)
    import torch

    # PyTorch's own footprint once imported, before their code builds
    # anything: the counterpart of our import_rss_bytes.
    process_memory = _load_process_memory()
    import_rss = process_memory.exact_peak_rss_bytes()
    _, import_anon = process_memory.read_statm()
    sampler = process_memory.PeakSampler().start()
    model, args = authors_code.build_model(authors_dir, config_path)
    batch = _random_batch(args)

    def step():
        if _PHASE.value == "train":
            model.run_train_iter(data_batch=batch, epoch=_EPOCH.value)
        else:
            model.run_validation_iter(data_batch=batch)

    start = time.perf_counter()
    step()
    first_call = time.perf_counter() - start
    for _ in range(_WARMUP.value):
        step()
    times = []
    for _ in range(_STEPS.value):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    sampler.stop()
    figures = {
        "implementation": "authors' PyTorch (HowToTrainYourMAMLPytorch)",
        "config": _CONFIG.value,
        "phase": _PHASE.value,
        "epoch": _EPOCH.value,
        "msl": bool(
            _PHASE.value == "train"
            and args.use_multi_step_loss_optimization
            and _EPOCH.value < args.multi_step_loss_num_epochs
        ),
        "second_order": bool(
            _PHASE.value == "train"
            and args.second_order
            and _EPOCH.value > args.first_order_to_second_order_epoch
        ),
        "first_call_seconds": first_call,
        "seconds_per_iteration": median,
        "iteration_seconds": times,
        "peak_rss_bytes": process_memory.exact_peak_rss_bytes(),
        "import_rss_bytes": import_rss,
        # The anonymous (private) part of the resident set, sampled by the
        # same code as ours (mamlpp_tf/process_memory.py).
        "peak_anon_bytes": sampler.peak_anon_bytes,
        "import_anon_bytes": import_anon,
        "sampled_peak_rss_bytes": sampler.peak_rss_bytes,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": f"CPU: {_cpu_name()}, {os.cpu_count()} cores",
    }
    text = json.dumps(figures, indent=2, sort_keys=True)
    print(text)
    if _OUTPUT_JSON.value:
        path = pathlib.Path(_OUTPUT_JSON.value)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


if __name__ == "__main__":
    app.run(main)
