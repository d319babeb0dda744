"""The SavedModel: runs with TensorFlow alone, predicts like the library."""

import json

import keras
import numpy as np
import pytest

from helpers import experiments
from helpers import run_saved_model
from mamlpp_tf import data as data_lib
from mamlpp_tf import experiment
from mamlpp_tf import export
from mamlpp_tf import learner as learner_lib


# Training takes 2 inner steps (tiny_config), the evaluation protocol 3:
# the export must run the evaluation's number.
NUM_EVAL_INNER_STEPS = 3


def library_logits(learner, task: dict, num_inner_steps=None) -> dict:
    """The library's logits for one task.

    adapt_and_predict: `eval_step`, the in-graph evaluation inner loop,
    with the config's num_eval_inner_steps unless `num_inner_steps`;
    meta_weights: the meta-weights without adaptation (for comparison).
    """
    batch = {k: v[None] for k, v in task.items()}
    _, logits = learner.eval_step(batch, num_inner_steps)
    return {
        "adapt_and_predict": logits[0],
        "meta_weights": np.asarray(learner.predict(task["query_x"])),
    }


def _trained_like(tmp_path_factory, **learner_overrides):
    """(config, learner, task, class names): weights and LSLR rates moved
    off init.

    Per-step BN weights and per-layer, per-step rates all differ, so the
    export must use each of them to match.
    """
    config = experiments.tiny_config(
        tmp_path_factory.mktemp("tfds"),
        learner=experiments.tiny_learner(
            num_eval_inner_steps=NUM_EVAL_INNER_STEPS, **learner_overrides
        ),
    )
    assert config.learner.num_inner_steps == 2
    keras.utils.set_random_seed(0)
    learner = learner_lib.MetaLearner(config.learner)
    rng = np.random.default_rng(0)
    for v in learner.model.trainable_variables:
        v.assign(np.asarray(v) + 0.3 * rng.normal(size=v.shape))
    for v in learner.inner_rates.variables:
        v.assign(rng.uniform(0.05, 0.5, size=v.shape))
    splits = data_lib.load_splits(config.data)
    batch = next(
        iter(
            data_lib.episode_dataset(
                splits["test"],
                config.episode_config(),
                split="test",
                num_tasks=2,
            )
        )
    )
    task = {
        k: batch[k][0].numpy()
        for k in ("support_x", "support_y", "query_x", "query_y")
    }
    names = [n for split in splits.values() for n in split.class_names]
    return config, learner, task, names


@pytest.fixture(scope="module")
def trained_like(tmp_path_factory):
    """The 4-conv network (see `_trained_like`)."""
    return _trained_like(tmp_path_factory)


@pytest.fixture(scope="module")
def trained_resnet12(tmp_path_factory):
    """A narrow ResNet-12 (see `_trained_like`)."""
    return _trained_like(tmp_path_factory, backbone="resnet12",
                         resnet_widths=(4, 4, 4, 4))


@pytest.mark.parametrize("trained", ["trained_like", "trained_resnet12"])
def test_saved_model_predicts_like_eval_step_without_the_library(
    trained, tmp_path, request
):
    config, learner, task, _ = request.getfixturevalue(trained)
    metadata = {"config": config.to_dict()}
    export_dir = export.save(
        learner, tmp_path / "model", metadata, normalization="none"
    )
    assert not (tmp_path / "model.tmp").exists()

    served = run_saved_model.run_in_subprocess(export_dir, task, tmp_path)

    # adapt_and_predict is the evaluation protocol: eval_step's logits,
    # with num_eval_inner_steps = 3 inner steps.
    expected = library_logits(learner, task)
    np.testing.assert_allclose(
        served["adapt_and_predict"], expected["adapt_and_predict"], atol=1e-5
    )
    # Only the protocol is served: no prediction without a support set.
    assert served["signatures"] == ["adapt_and_predict", "metadata"]
    # Not the training's 2 steps: that would be another model.
    two_steps = library_logits(learner, task, num_inner_steps=2)
    assert (
        np.abs(
            served["adapt_and_predict"] - two_steps["adapt_and_predict"]
        ).max()
        > 1e-2
    )
    # Adaptation changes the predictions: the inner loop ran.
    assert (
        np.abs(served["adapt_and_predict"] - expected["meta_weights"]).max()
        > 0.1
    )


def test_the_model_carries_what_a_request_must_match(trained_like, tmp_path):
    config, learner, task, class_names = trained_like
    export_dir = export.save(
        learner, tmp_path / "model", {"note": "mine"}, normalization="none"
    )
    served = run_saved_model.run_in_subprocess(export_dir, task, tmp_path)
    # tiny_config: 16x16 grey images, 2-way 1-shot, 1 query, 3 eval steps.
    assert served["metadata_tensors"] == {
        "image_shape": [16, 16, 1],
        "num_ways": 2,
        "num_inner_steps": 3,
    }
    serving = served["metadata"]
    assert serving["format_version"] == export.SERVING_FORMAT_VERSION
    assert (serving["num_shots"], serving["num_queries"]) == (1, 1)
    assert serving["bn_mode"] == "transductive"
    assert serving["preprocessing"]["color_mode"] == "L"
    assert serving["preprocessing"]["resize_filter"] == "box"
    assert serving["preprocessing"]["normalization"] == "none"
    assert serving["preprocessing"]["pixel_scale"] == [1 / 255]
    # The same in assets.extra, next to the caller's metadata.
    written = json.loads((export_dir / export.METADATA_PATH).read_text())
    assert written == {"note": "mine", "serving": serving}
    # It names no training class.
    text = json.dumps(serving)
    assert class_names and not [n for n in class_names if n in text]


def test_export_refuses_a_non_empty_export_dir(trained_like, tmp_path):
    learner = trained_like[1]
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "keep.txt").write_text("mine")
    with pytest.raises(
        FileExistsError, match="exists and is not an empty folder"
    ):
        export.save(learner, tmp_path / "model", {}, normalization="none")
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["keep.txt"]


def test_export_workdir_needs_a_run_with_weights(trained_like, tmp_path):
    config = trained_like[0]
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        export.export_workdir(tmp_path, tmp_path / "model")
    experiment.write_config(config, tmp_path)
    with pytest.raises(ValueError, match="no validated epoch yet"):
        export.export_workdir(tmp_path, tmp_path / "model")
    with pytest.raises(ValueError, match="no training checkpoint"):
        export.export_workdir(tmp_path, tmp_path / "model", weights="latest")
    with pytest.raises(ValueError, match="weights must be one of"):
        export.export_workdir(tmp_path, tmp_path / "model", weights="final")
    assert not (tmp_path / "model").exists()
