"""mamlpp-predict: folders in, one row per query out, bad requests refused."""

import csv
import json
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from helpers import apps
from helpers import experiments
from mamlpp_tf import export
from mamlpp_tf import learner as learner_lib
from mamlpp_tf import prediction
from mamlpp_tf.data import preprocessing
from mamlpp_tf.data import synthetic

# tiny_learner: 2-way, 16x16 grey images, 2 inner steps.
SHAPE = experiments.IMAGE_SHAPE


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(export dir, learner): a tiny model with weights moved off init."""
    keras.utils.set_random_seed(0)
    learner = learner_lib.MetaLearner(experiments.tiny_learner())
    rng = np.random.default_rng(0)
    for v in learner.model.trainable_variables:
        v.assign(np.asarray(v) + 0.3 * rng.normal(size=v.shape))
    path = tmp_path_factory.mktemp("export") / "model"
    export.save(learner, path, {}, normalization="none")
    return path, learner


def _write_images(folder, class_index, count, first=0):
    """Synthetic glyphs of class `class_index`, saved at 20x20 (resized to
    16x16 when read)."""
    folder.mkdir(parents=True, exist_ok=True)
    images = synthetic.draw_class(7, class_index, first + count, (20, 20, 1))
    for i in range(first, first + count):
        Image.fromarray(images[i, :, :, 0]).save(folder / f"{i:02d}.png")


@pytest.fixture
def folders(tmp_path):
    """support/{cat,dog}: 2 images each; query/{cat,dog}: 3 images each."""
    for index, name in enumerate(("cat", "dog")):
        _write_images(tmp_path / "support" / name, index, 2)
        _write_images(tmp_path / "query" / name, index, 3, first=2)
    return tmp_path


def _library_probabilities(learner, support_paths, labels, query_paths):
    """The same request through MetaLearner.adapt/predict (no SavedModel)."""

    def read(paths):
        images = np.stack([preprocessing.read_image(p, SHAPE) for p in paths])
        return preprocessing.scale_pixels(images, "none")

    fast = learner.adapt(read(support_paths), labels)
    logits = learner.predict(read(query_paths), fast)
    return tf.nn.softmax(logits).numpy()


def test_predictions_match_the_library_and_score_the_accuracy(
    exported, folders
):
    model_dir, learner = exported
    result = prediction.predict_folders(
        model_dir, folders / "support", folders / "query"
    )
    assert result.class_names == ("cat", "dog")
    assert result.support_counts == (2, 2)
    assert result.num_inner_steps == 2 and result.bn_mode == "transductive"
    assert [p.split("/")[-2:] for p in result.paths] == [
        [c, f"{i:02d}.png"] for c in ("cat", "dog") for i in (2, 3, 4)
    ]
    assert result.true_classes == ("cat",) * 3 + ("dog",) * 3
    support = [
        str(folders / "support" / c / f"{i:02d}.png")
        for c in ("cat", "dog")
        for i in (0, 1)
    ]
    expected = _library_probabilities(
        learner, support, [0, 0, 1, 1], list(result.paths)
    )
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-5)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1, rtol=1e-5)
    hits = np.argmax(expected, 1) == np.array([0, 0, 0, 1, 1, 1])
    assert result.accuracy == pytest.approx(hits.mean())


def test_csv_and_json_outputs(exported, folders, tmp_path):
    result = prediction.predict_folders(
        exported[0], folders / "support", folders / "query"
    )
    prediction.write_predictions(result, tmp_path / "out" / "p.csv")
    with open(tmp_path / "out" / "p.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == [
        "path",
        "predicted_class",
        "true_class",
        "p_cat",
        "p_dog",
    ]
    assert len(rows) == 7
    first = rows[1]
    assert first[0] == result.paths[0] and first[2] == "cat"
    assert first[1] == result.predicted[0]
    assert float(first[3]) == pytest.approx(result.probabilities[0, 0], 1e-5)

    prediction.write_predictions(result, tmp_path / "p.json")
    values = json.loads((tmp_path / "p.json").read_text())
    assert values["classes"] == ["cat", "dog"]
    assert values["accuracy"] == result.accuracy
    assert values["predictions"][3]["true_class"] == "dog"
    assert set(values["predictions"][3]["probabilities"]) == {"cat", "dog"}
    with pytest.raises(ValueError, match="must end in .csv or .json"):
        prediction.write_predictions(result, tmp_path / "p.txt")


def test_unlabelled_queries_have_no_accuracy(exported, folders):
    result = prediction.predict_folders(
        exported[0], folders / "support", folders / "query" / "dog"
    )
    assert result.true_classes == (None,) * 3 and result.accuracy is None
    single = prediction.predict_folders(
        exported[0], folders / "support", result.paths[0]
    )
    assert single.paths == result.paths[:1]


def test_transductive_batch_norm_depends_on_the_query_batch(exported, folders):
    everything = prediction.predict_folders(
        exported[0], folders / "support", folders / "query"
    )
    again = prediction.predict_folders(
        exported[0], folders / "support", folders / "query"
    )
    np.testing.assert_array_equal(everything.probabilities, again.probabilities)
    one_by_one = prediction.predict_folders(
        exported[0],
        folders / "support",
        folders / "query",
        query_batch_size=1,
    )
    assert one_by_one.query_batch_size == 1
    # A batch of one image has zero variance around its own mean: other
    # statistics, other probabilities.
    difference = np.abs(one_by_one.probabilities - everything.probabilities)
    assert difference.max() > 1e-3
    # Batches of 3 here are the two class folders: each batch is scored as
    # when it is the whole query set.
    threes = prediction.predict_folders(
        exported[0],
        folders / "support",
        folders / "query",
        query_batch_size=3,
    )
    cats = prediction.predict_folders(
        exported[0], folders / "support", folders / "query" / "cat"
    )
    np.testing.assert_allclose(
        threes.probabilities[:3], cats.probabilities, atol=1e-6
    )


def test_wrong_requests_are_refused_by_name(exported, folders, tmp_path):
    model_dir = exported[0]
    support, query = folders / "support", folders / "query"
    _write_images(tmp_path / "three" / "a", 0, 1)
    _write_images(tmp_path / "three" / "b", 1, 1)
    _write_images(tmp_path / "three" / "c", 2, 1)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "holds 3 class folder(s) ['a', 'b', 'c'], but the model was "
            "trained for 2-way tasks"
        ),
    ):
        prediction.predict_folders(model_dir, tmp_path / "three", query)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    _write_images(tmp_path / "empty" / "b", 1, 1)
    with pytest.raises(ValueError, match="empty: every class needs"):
        prediction.predict_folders(model_dir, tmp_path / "empty", query)
    (support / "stray.png").write_bytes(
        (support / "cat" / "00.png").read_bytes()
    )
    with pytest.raises(ValueError, match="must hold only class folders"):
        prediction.predict_folders(model_dir, support, query)
    (support / "stray.png").unlink()
    (query / "cow").mkdir()
    with pytest.raises(ValueError, match=r"\['cow'\] are not support classes"):
        prediction.predict_folders(model_dir, support, query)
    (query / "cow").rmdir()
    (query / "loose.png").write_bytes((query / "cat" / "02.png").read_bytes())
    with pytest.raises(ValueError, match="mixes image files and folders"):
        prediction.predict_folders(model_dir, support, query)
    (query / "loose.png").write_text("not an image")
    with pytest.raises(ValueError, match="mixes"):
        prediction.predict_folders(model_dir, support, query)
    (query / "loose.png").unlink()
    broken = query / "cat" / "broken.png"
    broken.write_text("not an image")
    with pytest.raises(
        ValueError, match=re.escape(f"Cannot decode image '{broken}'")
    ):
        prediction.predict_folders(model_dir, support, query)
    with pytest.raises(FileNotFoundError, match="is not a SavedModel"):
        prediction.predict_folders(tmp_path, support, query)


def test_arrays_of_the_wrong_size_or_labels_are_refused(exported):
    model = prediction.load_exported(exported[0])
    assert model.image_shape == SHAPE and model.num_ways == 2
    good = np.zeros((2, *SHAPE), np.uint8)
    with pytest.raises(
        ValueError,
        match=r"support images are uint8 \(28, 28, 1\).*takes "
        r"uint8 \(16, 16, 1\)",
    ):
        prediction.classify(
            model, np.zeros((2, 28, 28, 1), np.uint8), [0, 1], good
        )
    with pytest.raises(ValueError, match="query images are float32"):
        prediction.classify(model, good, [0, 1], good.astype(np.float32))
    with pytest.raises(ValueError, match=r"each of the 2 classes.*\[0\]"):
        prediction.classify(model, good, [0, 0], good)
    with pytest.raises(ValueError, match="query_batch_size must be None"):
        prediction.classify(model, good, [0, 1], good, query_batch_size=0)


def test_an_export_without_metadata_is_refused(tmp_path):
    module = tf.Module()
    module.f = tf.function(lambda: tf.constant(1), input_signature=[])
    tf.saved_model.save(
        module, str(tmp_path / "old"), signatures={"predict": module.f}
    )
    with pytest.raises(ValueError, match="no 'metadata' signature.*again"):
        prediction.load_exported(tmp_path / "old")


def test_the_app_writes_predictions_and_refuses_bad_requests(
    exported, folders, tmp_path
):
    output = tmp_path / "predictions.json"
    result = apps.run(
        "predict",
        f"--model_dir={exported[0]}",
        f"--support_dir={folders / 'support'}",
        f"--query={folders / 'query'}",
        f"--output={output}",
    )
    assert result.returncode == 0, apps.describe(result)
    values = json.loads(output.read_text())
    assert len(values["predictions"]) == 6
    assert "Adapted to 2 classes (support images: cat 2, dog 2)" in (
        result.stdout
    )
    assert f"Accuracy: {values['accuracy']:.4f}" in result.stdout
    assert f"Wrote {output}." in result.stdout

    result = apps.run(
        "predict",
        f"--model_dir={exported[0]}",
        f"--support_dir={folders / 'support' / 'cat'}",
        f"--query={folders / 'query'}",
        f"--output={tmp_path / 'refused.csv'}",
        installed=False,
    )
    # A refused request: exit 2, one line, no traceback, nothing written.
    assert result.returncode == 2, apps.describe(result)
    assert "Traceback" not in result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error")]
    assert "must hold only class folders" in line
    assert not (tmp_path / "refused.csv").exists()
