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


def library_logits(learner, task: dict) -> dict:
    """The library's logits for one task.

    adapt_and_predict: `eval_step`, the in-graph evaluation inner loop;
    predict: the meta-weights.
    """
    batch = {k: v[None] for k, v in task.items()}
    _, logits = learner.eval_step(batch, learner.config.num_inner_steps)
    return {
        "adapt_and_predict": logits[0],
        "predict": np.asarray(learner.predict(task["query_x"])),
    }


@pytest.fixture(scope="module")
def trained_like(tmp_path_factory):
    """(config, learner, task): weights and LSLR rates moved off init.

    Per-step BN weights and per-layer, per-step rates all differ, so the
    export must use each of them to match.
    """
    config = experiments.tiny_config(tmp_path_factory.mktemp("tfds"))
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
    return config, learner, task


def test_saved_model_predicts_like_the_library_without_it(
    trained_like, tmp_path
):
    config, learner, task = trained_like
    metadata = {"config": config.to_dict()}
    export_dir = export.save(learner, tmp_path / "model", metadata)
    assert not (tmp_path / "model.tmp").exists()
    assert json.loads((export_dir / export.METADATA_PATH).read_text()) == (
        json.loads(json.dumps(metadata))
    )

    served = run_saved_model.run_in_subprocess(export_dir, task, tmp_path)

    expected = library_logits(learner, task)
    np.testing.assert_allclose(
        served["adapt_and_predict"], expected["adapt_and_predict"], atol=1e-5
    )
    np.testing.assert_allclose(
        served["predict"], expected["predict"], atol=1e-5
    )
    # Adaptation changes the predictions: the inner loop ran.
    assert np.abs(served["adapt_and_predict"] - served["predict"]).max() > 0.1


def test_export_refuses_a_non_empty_export_dir(trained_like, tmp_path):
    learner = trained_like[1]
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "keep.txt").write_text("mine")
    with pytest.raises(
        FileExistsError, match="exists and is not an empty folder"
    ):
        export.save(learner, tmp_path / "model", {})
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
