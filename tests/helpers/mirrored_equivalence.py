"""Subprocess: one MAML++ step under MirroredStrategy vs the default one.

Run as a script (it must configure 2 logical CPUs before TF starts). Prints
one JSON line: the max differences of loss, weights and BN statistics.
"""

import json
import sys

import numpy as np
import tensorflow as tf

from mamlpp_tf import config as config_lib
from mamlpp_tf import data as data_lib
from mamlpp_tf import distribute
from mamlpp_tf import learner as learner_lib


def _config():
    return config_lib.mamlpp(
        num_ways=3, num_shots=2, num_queries=2, meta_batch_size=4,
        image_shape=(8, 8, 1), num_filters=4, num_stages=2,
        num_inner_steps=2, num_eval_inner_steps=2, msl_epochs=3,
        first_order_to_second_order_epoch=-1, bn_mode="per_step_running",
    )


def _batch(config):
    rng = np.random.default_rng(0)
    t, n = config.meta_batch_size, config.num_ways
    return {
        "support_x": rng.random((t, n * config.num_shots, 8, 8, 1), np.float32),
        "support_y": np.tile(np.repeat(np.arange(n, dtype=np.int32),
                                       config.num_shots), (t, 1)),
        "query_x": rng.random((t, n * config.num_queries, 8, 8, 1), np.float32),
        "query_y": np.tile(np.repeat(np.arange(n, dtype=np.int32),
                                     config.num_queries), (t, 1)),
    }


# Query classes of the 4 tasks in the closed-form check (one per task).
CLOSED_FORM_CLASSES = (0, 1, 2, 0)


def _closed_form(config, strategy, distribute_batch):
    """(meta-loss, meta-gradient of the dense bias) of one step whose
    values are known: the dense layer and the inner rates are zero, so
    every query logit is 0 at every inner step.

    Each task's loss is then ln(num_ways) and its dense-bias gradient
    softmax - one_hot = 1/N - [n == class]; see test_distribute.py for
    their means over the tasks. The gradient is read from Adam's first
    moment, (1 - beta_1) * gradient after one step.
    """
    tf.keras.utils.set_random_seed(0)
    learner = learner_lib.MetaLearner(config, strategy=strategy)
    names = learner.trainable_variable_names
    for name, variable in zip(names, learner.trainable_variables):
        if name.startswith(("network/dense/", "inner_lr/")):
            variable.assign(tf.zeros_like(variable))
    batch = _batch(config)
    queries = config.num_ways * config.num_queries
    batch["query_y"] = np.repeat(
        np.array(CLOSED_FORM_CLASSES, np.int32)[:, None], queries, axis=1
    )
    metrics = learner.train_step(distribute_batch(batch), 0)
    first_moment = learner.optimizer._momentums[
        names.index("network/dense/bias")
    ].numpy()
    return float(metrics["loss"]), (
        first_moment / (1.0 - config.adam_beta1)
    ).tolist()


def _state(learner):
    weights = [np.asarray(v.numpy()) for v in learner.trainable_variables]
    stats = [np.asarray(n.moving_mean.numpy()) for n in learner.norm_layers]
    return weights, stats


def main():
    runtime = distribute.RuntimeConfig(strategy="mirrored",
                                       logical_cpu_devices=2)
    mirrored = distribute.make_strategy(runtime)
    config = _config()
    batch = _batch(config)

    tf.keras.utils.set_random_seed(0)
    single = learner_lib.MetaLearner(config)
    tf.keras.utils.set_random_seed(0)
    multi = learner_lib.MetaLearner(config, strategy=mirrored)
    for a, b in zip(single.trainable_variables, multi.trainable_variables):
        b.assign(a.numpy())

    def distribute_batch(batch):
        def slices(ctx):
            r, per = ctx.replica_id_in_sync_group, config.meta_batch_size // 2
            return {k: tf.constant(v[r * per:(r + 1) * per])
                    for k, v in batch.items()}

        return mirrored.experimental_distribute_values_from_function(slices)

    dist_batch = distribute_batch(batch)
    out = {"replicas": mirrored.num_replicas_in_sync}
    for epoch in (0, 1):
        m1 = single.train_step({k: tf.constant(v) for k, v in batch.items()},
                               epoch)
        m2 = multi.train_step(dist_batch, epoch)
        out[f"loss_diff_{epoch}"] = float(abs(m1["loss"] - m2["loss"]))
        out[f"loss_{epoch}"] = float(m1["loss"])
    (w1, s1), (w2, s2) = _state(single), _state(multi)
    out["weight_diff"] = max(float(np.max(np.abs(a - b)))
                             for a, b in zip(w1, w2))
    out["per_variable"] = {
        n: float(np.max(np.abs(a - b)))
        for n, a, b in zip(single.trainable_variable_names, w1, w2)
    }
    out["bn_stat_diff"] = max(float(np.max(np.abs(a - b)))
                              for a, b in zip(s1, s2))
    e1, _ = single.eval_step({k: tf.constant(v) for k, v in batch.items()})
    e2, _ = multi.eval_step(dist_batch)
    out["eval_accuracy_diff"] = abs(e1["accuracy"] - e2["accuracy"])
    out["eval_task_count"] = int(len(e2["task_accuracy"]))
    out["pipeline_matches"] = _pipeline_matches(mirrored)
    out["closed_form_single"] = _closed_form(
        config, None,
        lambda b: {k: tf.constant(v) for k, v in b.items()},
    )
    out["closed_form_mirrored"] = _closed_form(
        config, mirrored, distribute_batch
    )
    print(json.dumps(out))
    return 0


def _pipeline_matches(strategy):
    """Replica slices of `episode_batches` put together = one-device batch."""
    rng = np.random.default_rng(1)
    images = data_lib.ClassImages(
        images=rng.integers(0, 255, (12 * 4, 8, 8, 1), dtype=np.uint8),
        class_offsets=np.arange(0, 49, 4, dtype=np.int64),
        class_names=tuple(f"c{i}" for i in range(12)),
    )
    episodes = data_lib.EpisodeConfig(num_ways=3, num_shots=1, num_queries=1,
                                      meta_batch_size=4)
    single = distribute.episode_batches(None, images, episodes, split="val",
                                        start_task=8, num_tasks=8)
    multi = distribute.episode_batches(strategy, images, episodes, split="val",
                                       start_task=8, num_tasks=8)
    for one, many in zip(single, multi, strict=True):
        parts = strategy.experimental_local_results(many["query_x"])
        if not np.array_equal(one["query_x"].numpy(),
                              np.concatenate([p.numpy() for p in parts])):
            return False
    return True


if __name__ == "__main__":
    sys.exit(main())
