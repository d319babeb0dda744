"""Tiny experiments on generated glyphs, for the app-level tests."""

import dataclasses

from mamlpp_tf import config as config_lib
from mamlpp_tf import data as data_lib
from mamlpp_tf import experiment

# 4 stages need at least 16x16 images; few classes keep preparation fast.
IMAGE_SHAPE = (16, 16, 1)

# What a finished run directory holds (docs/apps.md, "Run directory"); a
# multi-worker run adds "workers".
RUN_DIRECTORY_ENTRIES = [
    "checkpoints",
    "config.json",
    "metrics.csv",
    "runtime_history.jsonl",
    "tensorboard",
    "test_summary.json",
    "top_k",
]


def tiny_config(tfds_dir, **overrides) -> experiment.ExperimentConfig:
    """2-way 1-shot, 4 filters, 2 inner steps, 2 epochs x 3 meta-steps.

    DA switches to second order after epoch 0, so a run traces both
    orders. `overrides` replace ExperimentConfig fields; pass
    learner=... built with `tiny_learner` to change the learner.
    """
    data = data_lib.DataConfig(
        dataset="synthetic",
        tfds_data_dir=str(tfds_dir),
        synthetic_num_classes=(6, 4, 4),
        synthetic_images_per_class=4,
        synthetic_image_shape=IMAGE_SHAPE,
    )
    config = experiment.ExperimentConfig(
        learner=tiny_learner(),
        data=data,
        iterations_per_epoch=3,
        num_eval_tasks=4,
        top_k_ensemble=2,
        checkpoint_every=2,
        log_every=2,
    )
    return dataclasses.replace(config, **overrides)


def tiny_learner(**overrides) -> config_lib.MetaLearnerConfig:
    """The MetaLearnerConfig of `tiny_config`, with `overrides`."""
    values = dict(
        num_ways=2,
        num_shots=1,
        num_queries=1,
        meta_batch_size=2,
        image_shape=IMAGE_SHAPE,
        num_filters=4,
        num_inner_steps=2,
        num_eval_inner_steps=2,
        msl_epochs=1,
        first_order_to_second_order_epoch=0,
        total_epochs=2,
    )
    values.update(overrides)
    return config_lib.mamlpp(**values)
