"""MamlppClassifier: the apps' meta-step under fit, schedules, callbacks."""

import csv

import keras
import numpy as np
import pytest
import tensorflow as tf

import mamlpp_tf
from helpers import experiments
from mamlpp_tf import evaluation
from mamlpp_tf import learner as learner_lib
from mamlpp_tf import schedules

NUM_CLASSES = 12
IMAGES_PER_CLASS = 3


def _arrays(seed=0):
    """uint8 [36, 16, 16, 1] random glyphs of 12 classes, and labels."""
    rng = np.random.default_rng(seed)
    images = rng.integers(
        0, 256, (NUM_CLASSES * IMAGES_PER_CLASS, *experiments.IMAGE_SHAPE)
    ).astype(np.uint8)
    labels = np.repeat(np.arange(NUM_CLASSES), IMAGES_PER_CLASS)
    return images, labels


def _episodes(**overrides):
    values = dict(
        num_ways=2,
        num_shots=1,
        num_queries=1,
        meta_batch_size=2,
        num_eval_tasks=4,
        split_fractions=(0.5, 0.25, 0.25),
    )
    values.update(overrides)
    return mamlpp_tf.make_episodes(_arrays(), **values)


def _config(**overrides):
    # 2-way 1-shot, 4 filters, 2 steps; DA: first order in epoch 0 only.
    values = dict(total_epochs=3, msl_epochs=2)
    values.update(overrides)
    return experiments.tiny_learner(**values)


def _model(config=None, seed=0):
    keras.utils.set_random_seed(seed)
    return mamlpp_tf.MamlppClassifier(config or _config())


def _weights(model):
    """Meta-parameters, LSLR rates and BN statistics of a MamlppClassifier
    or a MetaLearner."""
    learner = getattr(model, "learner", model)
    return [np.array(v) for v in learner.trainable_variables] + [
        np.array(v) for n in learner.norm_layers for v in n.variables
    ]


@pytest.fixture(scope="module")
def episodes():
    return _episodes()


def test_a_fit_step_is_the_apps_meta_step(episodes):
    # Same initial weights, same batches, the authors' Adam: fit and
    # MetaLearner.train_step (the apps) reach the same weights, BN
    # statistics included, over a first-order and a second-order epoch.
    batches = list(episodes.train.take(2))
    model = _model()
    model.compile(optimizer=mamlpp_tf.TorchAdam(learning_rate=1e-3))
    keras.utils.set_random_seed(0)
    apps = learner_lib.MetaLearner(_config())
    np.testing.assert_array_equal(_weights(model)[0], _weights(apps)[0])

    dataset = tf.data.Dataset.from_tensor_slices(
        {k: tf.stack([b[k] for b in batches]) for k in batches[0]}
    )
    model.fit(dataset, epochs=2, steps_per_epoch=1, verbose=0)
    for epoch, batch in enumerate(batches):
        apps.train_step(batch, epoch)

    # Same ops in two traced graphs: float32 rounding, amplified by Adam's
    # normalised first steps (each moves a weight by ~lr).
    for got, expected in zip(_weights(model), _weights(apps), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert not np.allclose(_weights(model)[0], _weights(_model())[0])


def test_the_schedules_follow_the_fit_epoch(episodes):
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            model = self.model
            seen.append(
                (
                    int(model.epoch.numpy()),
                    np.array(model.msl_weights),
                    float(model.optimizer.learning_rate.numpy()),
                    model._second_order,
                )
            )

    config = _config(total_epochs=3, msl_epochs=2)
    model = _model(config)
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    model.fit(episodes.train, epochs=3, steps_per_epoch=1, verbose=0,
              callbacks=[Record()])

    assert [s[0] for s in seen] == [0, 1, 2]
    # MSL over 2 epochs of 2 steps (Sec. 4): uniform, then annealing, then
    # the final step alone.
    np.testing.assert_allclose(seen[0][1], [0.5, 0.5])
    np.testing.assert_allclose(seen[1][1], [0.25, 0.75])
    np.testing.assert_allclose(seen[2][1], [0.0, 1.0])
    # CA: 1e-3 -> 1e-5 over 3 epochs, whatever SGD was built with.
    expected = [1e-5 + (1e-3 - 1e-5) * (1 + np.cos(np.pi * e / 3)) / 2
                for e in range(3)]
    np.testing.assert_allclose([s[2] for s in seen], expected, rtol=1e-6)
    # DA: first order while epoch <= 0.
    assert [s[3] for s in seen] == [False, True, True]


def test_evaluate_is_the_protocol_with_its_interval(episodes):
    model = _model()
    model.compile()
    result = model.evaluate(episodes.test, return_dict=True, verbose=0)
    expected = evaluation.evaluate_batches(model.learner, episodes.test)
    assert result["accuracy"] == pytest.approx(expected.accuracy_mean)
    assert result["accuracy_ci95"] == pytest.approx(expected.accuracy_ci95)
    assert result["loss"] == pytest.approx(expected.loss, rel=1e-5)
    assert expected.task_accuracies.size == 4


def test_adapt_and_predict_is_one_call_of_the_protocol(episodes):
    model = _model()
    batch = next(iter(episodes.test))
    _, logits = model.learner.eval_step(batch)
    got = model.adapt_and_predict(
        batch["support_x"][1], batch["support_y"][1], batch["query_x"][1]
    )
    np.testing.assert_allclose(got, logits[1], atol=1e-5)
    np.testing.assert_allclose(model.predict(batch, verbose=0), logits,
                               atol=1e-5)
    with pytest.raises(ValueError, match=r"support_y must be \[2\] labels"):
        model.adapt_and_predict(
            batch["support_x"][1], [0, 5], batch["query_x"][1]
        )


def test_standard_callbacks_work(episodes, tmp_path):
    model = _model()
    model.compile()
    history = model.fit(
        episodes.train,
        epochs=3,
        steps_per_epoch=1,
        validation_data=episodes.val,
        verbose=0,
        callbacks=[
            keras.callbacks.TensorBoard(str(tmp_path / "tb")),
            keras.callbacks.CSVLogger(str(tmp_path / "log.csv")),
            keras.callbacks.ModelCheckpoint(
                str(tmp_path / "best.keras"), monitor="val_accuracy",
                mode="max", save_best_only=True,
            ),
            # Stops after epoch 1: val_loss cannot improve by 10.
            keras.callbacks.EarlyStopping(
                monitor="val_loss", min_delta=10.0, patience=1
            ),
        ],
    )
    assert history.epoch == [0, 1]
    with open(tmp_path / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert {"accuracy", "loss", "val_accuracy", "val_accuracy_ci95"} <= set(
        rows[0]
    )
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    best = keras.models.load_model(tmp_path / "best.keras")
    assert isinstance(best, mamlpp_tf.MamlppClassifier)


def test_backup_and_restore_resumes_at_the_right_epoch(episodes, tmp_path):
    epochs_begun = []

    class Crash(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            epochs_begun.append(epoch)
            if epoch == 2 and len(epochs_begun) == 3:
                raise RuntimeError("killed")

    backup = str(tmp_path / "backup")
    model = _model()
    model.compile()
    with pytest.raises(RuntimeError, match="killed"):
        model.fit(episodes.train, epochs=3, steps_per_epoch=1, verbose=0,
                  callbacks=[keras.callbacks.BackupAndRestore(backup), Crash()])
    saved = _weights(model)

    resumed = _model(seed=5)  # Other initial weights.
    resumed.compile()
    resumed.fit(episodes.train, epochs=3, steps_per_epoch=1, verbose=0,
                callbacks=[keras.callbacks.BackupAndRestore(backup), Crash()])
    assert epochs_begun == [0, 1, 2, 2]
    # The schedules of epoch 2 (the second order and CA's rate) were set.
    assert int(resumed.epoch.numpy()) == 2
    assert resumed.optimizer.learning_rate.numpy() == pytest.approx(
        schedules.meta_lr(resumed.meta_config, 2)
    )
    assert resumed._second_order
    # Epoch 2 trained on top of the restored weights of epoch 1.
    assert not np.allclose(_weights(resumed)[0], saved[0])


def test_keras_format_round_trip(episodes, tmp_path):
    model = _model()
    model.compile()
    model.fit(episodes.train, epochs=1, steps_per_epoch=1, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert loaded.meta_config == model.meta_config
    for got, expected in zip(_weights(loaded), _weights(model), strict=True):
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(
        loaded.predict(episodes.test, verbose=0),
        model.predict(episodes.test, verbose=0),
    )
    assert isinstance(loaded.optimizer, mamlpp_tf.TorchAdam)
    assert int(loaded.optimizer.iterations.numpy()) == 1


def test_a_custom_backbone_trains_saves_and_loads(episodes, tmp_path):
    config = _config(backbone="custom")

    def network(config):
        plain = keras.Sequential([
            keras.Input(config.image_shape),
            keras.layers.Conv2D(4, 3, padding="same"),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(config.num_ways),
        ])
        return mamlpp_tf.to_meta_model(plain, config)

    keras.utils.set_random_seed(0)
    model = mamlpp_tf.MamlppClassifier(config, backbone=network)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(episodes.train, epochs=1, steps_per_epoch=1, verbose=0)
    model.save(tmp_path / "custom.keras")
    loaded = keras.models.load_model(tmp_path / "custom.keras")
    np.testing.assert_allclose(
        loaded.predict(episodes.test, verbose=0),
        model.predict(episodes.test, verbose=0),
        atol=1e-6,
    )


def test_requests_the_schedules_cannot_honour_are_refused(episodes):
    model = _model()
    with pytest.raises(ValueError, match="loss and the metrics|meta-loss"):
        model.compile(loss="mse")
    with pytest.raises(ValueError, match="learning rate is a schedule"):
        model.compile(
            optimizer=keras.optimizers.Adam(
                keras.optimizers.schedules.ExponentialDecay(1e-3, 10, 0.9)
            )
        )
    model.compile()
    with pytest.raises(ValueError, match=r"fit\(epochs=4\) runs past"):
        model.fit(episodes.train, epochs=4, steps_per_epoch=1, verbose=0)


def test_keep_top_k_and_the_ensemble_on_fixed_test_tasks(episodes, tmp_path):
    model = _model()
    model.compile()
    history = model.fit(
        episodes.train, epochs=3, steps_per_epoch=1, verbose=0,
        validation_data=episodes.val,
        callbacks=[mamlpp_tf.KeepTopK(tmp_path / "top", k=2)],
    )
    scores = history.history["val_accuracy"]
    ranked = sorted(range(3), key=lambda e: (-scores[e], e))[:2]
    entries = mamlpp_tf.keras_model.read_top_k(tmp_path / "top")
    assert [e["epoch"] for e in entries] == ranked
    assert sorted(p.name for p in (tmp_path / "top").glob("*.h5")) == [
        f"epoch_{e:03d}.weights.h5" for e in sorted(ranked)
    ]

    summary = mamlpp_tf.evaluate_top_k(model, tmp_path / "top", episodes.test)
    # The same ensemble through the apps' evaluation functions.
    logits, labels = [], None
    for epoch in ranked:
        model.load_weights(tmp_path / "top" / f"epoch_{epoch:03d}.weights.h5")
        result = evaluation.evaluate_batches(model.learner, episodes.test)
        logits.append(result.logits)
        labels = result.labels
    ensemble = evaluation.ensemble_task_accuracies(logits, labels)
    assert summary["ensemble_epochs"] == ranked
    assert summary["num_test_tasks"] == 4
    assert summary["test_accuracy_mean"] == pytest.approx(ensemble.mean())
    assert summary["test_accuracy_ci95"] == pytest.approx(
        evaluation.ci95(ensemble)
    )


def test_non_finite_steps_are_skipped_then_stop_training(episodes):
    model = _model(_config(max_nonfinite_steps=2))
    model.compile()
    before = _weights(model)
    batch = {k: v.numpy() for k, v in next(iter(episodes.train)).items()}
    batch["support_x"][:] = np.nan
    nan_batches = tf.data.Dataset.from_tensors(batch).repeat()
    with pytest.raises(
        learner_lib.NonFiniteLossError, match="^2 consecutive meta-steps"
    ):
        model.fit(nan_batches, epochs=1, steps_per_epoch=5, verbose=0)
    assert int(model.num_skipped_steps.numpy()) == 2
    for got, expected in zip(_weights(model), before, strict=True):
        np.testing.assert_array_equal(got, expected)
