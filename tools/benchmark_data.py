"""Times the data pipeline: preparation, loading and episodes per second.

    python tools/benchmark_data.py \
        --omniglot_dir=../shared/data/omniglot --workdir=/tmp/bench_data

Omniglot: 20-way 1-shot, 1 query, meta-batch 8, rotations on (the authors'
training setting). mini-ImageNet: 5-way 5-shot, 15 queries, meta-batch 2;
without --mini_imagenet_dir a synthetic folder of the real size (64/16/20
classes x 600 JPEGs, CSV + images/ layout) is written into --workdir first.
Preparation goes into a fresh TFDS data dir under --workdir; "load" is a
second `load_splits` of the same settings in the same process.
"""

import os
import pathlib
import tempfile
import time

# TensorFlow's C++ INFO lines drown the report; keep its warnings.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from mamlpp_tf import data  # noqa: E402

_OMNIGLOT_DIR = flags.DEFINE_string(
    "omniglot_dir",
    None,
    "Omniglot root (images_background/, images_evaluation/); unset skips "
    "the Omniglot benchmark.",
)
_MINI_IMAGENET_DIR = flags.DEFINE_string(
    "mini_imagenet_dir",
    None,
    "mini-ImageNet root; unset writes a synthetic one into --workdir.",
)
_MINI_IMAGENET_IMAGES_PER_CLASS = flags.DEFINE_integer(
    "mini_imagenet_images_per_class",
    600,
    "Images per class of the synthetic mini-ImageNet (600 is the real size).",
    lower_bound=20,
)
_SKIP_MINI_IMAGENET = flags.DEFINE_bool(
    "skip_mini_imagenet", False, "Benchmark Omniglot only."
)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Scratch folder (TFDS data, synthetic data); a new "
    "temporary folder if unset.",
)
_NUM_BATCHES = flags.DEFINE_integer(
    "num_batches", 300, "Batches timed per pipeline.", lower_bound=1
)
_WARMUP_BATCHES = flags.DEFINE_integer(
    "warmup_batches", 20, "Batches read before timing.", lower_bound=1
)


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def _episodes_per_second(splits, config, split):
    """Tasks per second read from a fresh pipeline, after a warm-up."""
    num_tasks = None
    if split != "train":
        batches = _WARMUP_BATCHES.value + _NUM_BATCHES.value
        num_tasks = batches * config.meta_batch_size
    dataset, build_s = _timed(
        lambda: data.episode_dataset(
            splits[split], config, split=split, num_tasks=num_tasks
        )
    )
    iterator = iter(dataset)
    _, first_s = _timed(lambda: next(iterator))
    for _ in range(_WARMUP_BATCHES.value - 1):
        next(iterator)
    start = time.perf_counter()
    for _ in range(_NUM_BATCHES.value):
        batch = next(iterator)
    elapsed = time.perf_counter() - start
    shapes = {k: tuple(v.shape) for k, v in batch.items()}
    batches = _NUM_BATCHES.value / elapsed
    tasks = batches * config.meta_batch_size
    print(
        f"  {split:5s} {tasks:8.0f} tasks/s ({batches:.0f} batches/s); "
        f"pipeline built in {build_s:.2f} s, first batch "
        f"{first_s:.2f} s; {shapes}"
    )


def _benchmark(name, data_config, episode_config):
    print(f"{name}: {data_config}")
    splits, prepare_s = _timed(lambda: data.load_splits(data_config))
    _, load_s = _timed(lambda: data.load_splits(data_config))
    sizes = {
        s: f"{c.num_classes} classes x {c.images.shape[0]} images"
        for s, c in splits.items()
    }
    print(f"  prepare (first load_splits): {prepare_s:.1f} s; {sizes}")
    print(f"  load (second load_splits):   {load_s:.1f} s")
    print(f"  episodes: {episode_config}")
    for split in ("train", "val"):
        _episodes_per_second(splits, episode_config, split)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # TFDS logs each file at INFO.
    workdir = pathlib.Path(
        _WORKDIR.value or tempfile.mkdtemp(prefix="benchmark_data_")
    )
    workdir.mkdir(parents=True, exist_ok=True)
    tfds_dir = pathlib.Path(tempfile.mkdtemp(prefix="tfds_", dir=workdir))
    print(f"CPUs: {os.cpu_count()}; TFDS data dir: {tfds_dir}")
    if _OMNIGLOT_DIR.value:
        _benchmark(
            "Omniglot",
            data.DataConfig(
                dataset="omniglot",
                data_dir=_OMNIGLOT_DIR.value,
                tfds_data_dir=str(tfds_dir),
            ),
            data.episode_config_for(
                "omniglot", num_ways=20, num_shots=1, meta_batch_size=8
            ),
        )
    if _SKIP_MINI_IMAGENET.value:
        return
    root = _MINI_IMAGENET_DIR.value
    if root is None:
        per_class = _MINI_IMAGENET_IMAGES_PER_CLASS.value
        target = workdir / f"mini_imagenet_synthetic_{per_class}"
        if not target.exists():
            _, write_s = _timed(
                lambda: data.write_mini_imagenet_folder(
                    target, layout="csv_images", images_per_class=per_class
                )
            )
            print(
                f"Wrote synthetic mini-ImageNet to {target} in {write_s:.0f} s"
            )
        root = str(target)
    _benchmark(
        "mini-ImageNet",
        data.DataConfig(
            dataset="mini_imagenet", data_dir=root, tfds_data_dir=str(tfds_dir)
        ),
        data.episode_config_for(
            "mini_imagenet", num_ways=5, num_shots=5, meta_batch_size=2
        ),
    )


def run():
    """Console-script entry point."""
    app.run(main)


if __name__ == "__main__":
    run()
