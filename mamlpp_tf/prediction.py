"""New classes from a few examples: an exported model, folders in, rows out.

`predict_folders` adapts an exported model (`export.save`) to a support
folder (one subfolder per new class, a few images each) and classifies
query images. Every image goes through `data.preprocessing.read_image` and
`scale_pixels`, as in training, with the shape and normalisation the model
recorded; a request that the model cannot answer (another number of
classes, an empty class, images of another size) is refused with an error
that says so, before the model runs.

Transductive batch norm: with `bn_mode="transductive"` (the authors' code
and our default) the network normalises every batch with that batch's own
mean and variance, in training, evaluation and here. The query images
scored together therefore shift each other's predictions: a query scored
among other images of its own class, or in a batch of another size, can
get another answer than in a balanced batch like the training tasks' (one
image per class per query batch, `num_ways * num_queries` images). Score
all queries at once (`query_batch_size=None`, the default), or in fixed
batches of `query_batch_size` in the sorted query order (the last batch
holds the rest), to make results reproducible and comparable. The support
set is adapted to the same way whichever batches the queries are scored
in. With `bn_mode="per_step_running"` the queries are normalised with the
running statistics and do not affect each other.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import pathlib

import numpy as np
import tensorflow as tf

from mamlpp_tf import export
from mamlpp_tf.data import preprocessing

OUTPUT_FORMATS = (".csv", ".json")


@dataclasses.dataclass(frozen=True)
class ExportedModel:
    """A loaded SavedModel of `export.save` and its serving metadata.

    Attributes:
      path: the SavedModel folder.
      module: what `tf.saved_model.load` returned.
      metadata: `export.serving_metadata` as the model recorded it.
      image_shape: (H, W, C) of its input.
      normalization: its pixel normalisation.
    """

    path: str
    module: object
    metadata: dict
    image_shape: tuple[int, int, int]
    normalization: str

    @property
    def num_ways(self) -> int:
        """The number of classes of every request."""
        return int(self.metadata["num_ways"])


def load_exported(model_dir: str | os.PathLike) -> ExportedModel:
    """Loads a model written by `mamlpp-export` and checks its metadata.

    Raises:
      FileNotFoundError: `model_dir` is not a SavedModel.
      ValueError: the model lacks the metadata signature (an older export)
        or records another serving format or preprocessing.
    """
    path = pathlib.Path(model_dir)
    if not (path / "saved_model.pb").is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is not a SavedModel (no saved_model.pb). Pass the "
            "--export_dir of mamlpp-export."
        )
    module = tf.saved_model.load(str(path))
    if "metadata" not in module.signatures:
        raise ValueError(
            f"{str(path)!r} has no 'metadata' signature: it was exported by "
            "an older mamlpp_tf. Export it again with mamlpp-export."
        )
    metadata = json.loads(
        module.signatures["metadata"]()["json"].numpy().decode("utf-8")
    )
    version = metadata.get("format_version")
    if version not in export.READABLE_FORMAT_VERSIONS:
        raise ValueError(
            f"{str(path)!r} has serving format {version!r}; this mamlpp_tf "
            f"reads formats {list(export.READABLE_FORMAT_VERSIONS)}. Export "
            "it again with this version's mamlpp-export."
        )
    shape, normalization = preprocessing.check_described(
        metadata["preprocessing"]
    )
    return ExportedModel(
        path=str(path),
        module=module,
        metadata=metadata,
        image_shape=shape,
        normalization=normalization,
    )


def _visible(folder: pathlib.Path) -> list[pathlib.Path]:
    """Entries of `folder` sorted by name, without hidden ones."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _read_images(paths, image_shape) -> np.ndarray:
    """uint8 [n, H, W, C] of the files, as in training."""
    return np.stack(
        [preprocessing.read_image(str(p), image_shape) for p in paths]
    ).reshape(len(paths), *image_shape)


@dataclasses.dataclass(frozen=True)
class Support:
    """The support set: class names (label order) and their images."""

    class_names: tuple[str, ...]
    files: tuple[tuple[str, ...], ...]  # Per class, sorted.
    images: np.ndarray  # uint8 [n, H, W, C], class-major
    labels: np.ndarray  # int32 [n]


def read_support(
    support_dir: str | os.PathLike, model: ExportedModel
) -> Support:
    """Reads one folder per class; label i is the i-th folder by name.

    Raises:
      FileNotFoundError: `support_dir` is missing.
      ValueError: not exactly `model.num_ways` class folders, an empty
        class, a file outside the class folders, or an unreadable image.
    """
    root = pathlib.Path(support_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"--support_dir {str(root)!r} does not exist or is not a folder."
        )
    entries = _visible(root)
    stray = [str(p) for p in entries if not p.is_dir()]
    if stray:
        raise ValueError(
            f"--support_dir must hold only class folders, but holds "
            f"{stray[:5]}. Move each image into the folder of its class."
        )
    names = tuple(p.name for p in entries)
    if len(names) != model.num_ways:
        raise ValueError(
            f"--support_dir holds {len(names)} class folder(s) {list(names)}"
            f", but the model was trained for {model.num_ways}-way tasks: "
            f"give exactly {model.num_ways} classes (or train a "
            f"{len(names)}-way model with --num_ways={len(names)})."
        )
    files = []
    for folder in entries:
        members = _visible(folder)
        if not members:
            raise ValueError(
                f"Class folder {str(folder)!r} of --support_dir is empty: "
                "every class needs at least one image."
            )
        files.append(tuple(str(p) for p in members))
    paths = [p for class_files in files for p in class_files]
    labels = np.repeat(
        np.arange(len(files), dtype=np.int32), [len(f) for f in files]
    )
    return Support(
        class_names=names,
        files=tuple(files),
        images=_read_images(paths, model.image_shape),
        labels=labels,
    )


def find_queries(
    query: str | os.PathLike, class_names: tuple[str, ...]
) -> list[tuple[str, str | None]]:
    """(path, true class or None) of every query image, sorted.

    `query` is an image file, a folder of images, or a folder of class
    folders named like the support classes (then the true class is known
    and the accuracy can be scored).

    Raises:
      FileNotFoundError: `query` is missing.
      ValueError: an empty folder, a mix of files and folders, or a class
        folder not named like a support class.
    """
    path = pathlib.Path(query)
    if path.is_file():
        return [(str(path), None)]
    if not path.is_dir():
        raise FileNotFoundError(
            f"--query {str(path)!r} is neither an image file nor a folder."
        )
    entries = _visible(path)
    folders = [p for p in entries if p.is_dir()]
    if not entries:
        raise ValueError(f"--query folder {str(path)!r} is empty.")
    if not folders:
        return [(str(p), None) for p in entries]
    if len(folders) != len(entries):
        raise ValueError(
            f"--query folder {str(path)!r} mixes image files and folders. "
            "Give either images, or one folder per class named like the "
            "support classes."
        )
    unknown = [p.name for p in folders if p.name not in class_names]
    if unknown:
        raise ValueError(
            f"--query class folders {unknown} are not support classes "
            f"{list(class_names)}; name each like its support class to score "
            "the accuracy, or put the images directly in the query folder."
        )
    queries = [(str(f), p.name) for p in folders for f in _visible(p)]
    if not queries:
        raise ValueError(f"--query class folders in {str(path)!r} are empty.")
    return queries


def classify(
    model: ExportedModel,
    support_images: np.ndarray,
    support_labels: np.ndarray,
    query_images: np.ndarray,
    *,
    query_batch_size: int | None = None,
) -> np.ndarray:
    """Class probabilities of each query image: float32 [n_q, num_ways].

    Args:
      model: the exported model.
      support_images: uint8 [n_s, H, W, C], as `read_image` returns them.
      support_labels: int [n_s], every label of 0..num_ways-1 at least once.
      query_images: uint8 [n_q, H, W, C].
      query_batch_size: None scores all queries in one batch; k scores
        them k at a time (see the module docstring: transductive BN).

    Raises:
      ValueError: see `check_request`.
    """
    check_request(
        model,
        support_images,
        support_labels,
        query_images,
        query_batch_size=query_batch_size,
    )
    adapt_and_predict = model.module.signatures["adapt_and_predict"]
    support_x = preprocessing.scale_pixels(
        np.asarray(support_images), model.normalization
    )
    support_y = tf.constant(np.asarray(support_labels), tf.int32)
    size = query_batch_size or len(query_images)
    probabilities = []
    for start in range(0, len(query_images), size):
        batch = np.asarray(query_images[start : start + size])
        logits = adapt_and_predict(
            support_x=support_x,
            support_y=support_y,
            query_x=preprocessing.scale_pixels(batch, model.normalization),
        )["logits"]
        probabilities.append(tf.nn.softmax(logits).numpy())
    return np.concatenate(probabilities)


def check_request(
    model: ExportedModel,
    support_images: np.ndarray,
    support_labels: np.ndarray,
    query_images: np.ndarray,
    *,
    query_batch_size: int | None = None,
) -> None:
    """Checks a `classify` request without running the model.

    Raises:
      ValueError: a wrong image shape or dtype, labels that do not cover
        exactly num_ways classes, or a bad query_batch_size.
    """
    for name, images in (("support", support_images), ("query", query_images)):
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.shape[1:] != model.image_shape:
            raise ValueError(
                f"The {name} images are {images.dtype} {images.shape[1:]}, "
                f"but the model takes uint8 {model.image_shape} images. Read "
                "image files with mamlpp_tf.data.preprocessing.read_image("
                f"path, {model.image_shape}), as in training."
            )
        if not images.shape[0]:
            raise ValueError(f"Got no {name} images.")
    labels = np.asarray(support_labels)
    present = sorted(set(labels.tolist()))
    if present != list(range(model.num_ways)) or len(labels) != len(
        support_images
    ):
        raise ValueError(
            f"support_labels must give each of the {model.num_ways} classes "
            f"0..{model.num_ways - 1} at least one of the "
            f"{len(support_images)} images, got labels {present}."
        )
    if query_batch_size is not None and (
        not isinstance(query_batch_size, int) or query_batch_size < 1
    ):
        raise ValueError(
            f"query_batch_size must be None (all at once) or an int >= 1, "
            f"got {query_batch_size!r}."
        )


@dataclasses.dataclass(frozen=True)
class Predictions:
    """What `predict_folders` found: one row per query image.

    Attributes:
      class_names: the support classes, in label order.
      paths: the query image files.
      true_classes: per query, its class folder's name, or None.
      probabilities: float32 [n_q, num_ways].
      support_counts: images per support class.
      num_inner_steps: the adaptation steps the model ran.
      query_batch_size: None (all at once) or the batch size.
      bn_mode: the model's batch norm at evaluation.
    """

    class_names: tuple[str, ...]
    paths: tuple[str, ...]
    true_classes: tuple[str | None, ...]
    probabilities: np.ndarray
    support_counts: tuple[int, ...]
    num_inner_steps: int
    query_batch_size: int | None
    bn_mode: str

    @property
    def predicted(self) -> list[str]:
        """The predicted class name of each query."""
        best = np.argmax(self.probabilities, axis=1)
        return [self.class_names[i] for i in best]

    @property
    def accuracy(self) -> float | None:
        """The fraction predicted right, if the queries were in class
        folders; else None."""
        if any(t is None for t in self.true_classes):
            return None
        hits = [
            p == t
            for p, t in zip(self.predicted, self.true_classes, strict=True)
        ]
        return float(np.mean(hits))


@dataclasses.dataclass(frozen=True)
class FolderRequest:
    """A checked request of `read_request`, ready for `run_request`."""

    model: ExportedModel
    support: Support
    queries: tuple[tuple[str, str | None], ...]
    query_images: np.ndarray  # uint8 [n_q, H, W, C]
    query_batch_size: int | None


def read_request(
    model_dir: str | os.PathLike,
    support_dir: str | os.PathLike,
    query: str | os.PathLike,
    *,
    query_batch_size: int | None = None,
) -> FolderRequest:
    """Loads the model and reads and checks every image; runs nothing.

    Args:
      model_dir: a SavedModel written by `mamlpp-export`.
      support_dir: one folder per class, named by the class, holding its
        images; exactly the model's num_ways classes.
      query: an image file, a folder of images, or a folder of class
        folders named like the support classes (to score the accuracy).
      query_batch_size: see `classify`.

    Raises:
      FileNotFoundError, ValueError: a request the model cannot answer,
        named.
    """
    model = load_exported(model_dir)
    support = read_support(support_dir, model)
    queries = find_queries(query, support.class_names)
    query_images = _read_images([p for p, _ in queries], model.image_shape)
    check_request(
        model,
        support.images,
        support.labels,
        query_images,
        query_batch_size=query_batch_size,
    )
    return FolderRequest(
        model=model,
        support=support,
        queries=tuple(queries),
        query_images=query_images,
        query_batch_size=query_batch_size,
    )


def run_request(request: FolderRequest) -> Predictions:
    """Adapts to the support set and classifies the queries."""
    probabilities = classify(
        request.model,
        request.support.images,
        request.support.labels,
        request.query_images,
        query_batch_size=request.query_batch_size,
    )
    return Predictions(
        class_names=request.support.class_names,
        paths=tuple(p for p, _ in request.queries),
        true_classes=tuple(t for _, t in request.queries),
        probabilities=probabilities,
        support_counts=tuple(len(f) for f in request.support.files),
        num_inner_steps=int(request.model.metadata["num_inner_steps"]),
        query_batch_size=request.query_batch_size,
        bn_mode=request.model.metadata["bn_mode"],
    )


def predict_folders(
    model_dir: str | os.PathLike,
    support_dir: str | os.PathLike,
    query: str | os.PathLike,
    *,
    query_batch_size: int | None = None,
) -> Predictions:
    """Adapts the exported model to `support_dir` and classifies `query`:
    `run_request(read_request(...))`, see `read_request`."""
    return run_request(
        read_request(
            model_dir, support_dir, query, query_batch_size=query_batch_size
        )
    )


def check_output_path(output: str | os.PathLike) -> str:
    """The output format (".csv" or ".json") of `output`, by its suffix.

    Raises:
      ValueError: another suffix.
    """
    suffix = pathlib.Path(output).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(
            f"--output {str(output)!r} must end in .csv or .json (the format "
            "is chosen by the suffix)."
        )
    return suffix


def _rows(predictions: Predictions) -> list[dict]:
    rows = []
    for i, path in enumerate(predictions.paths):
        row = {
            "path": path,
            "predicted_class": predictions.predicted[i],
            "probabilities": {
                name: round(float(p), 6)
                for name, p in zip(
                    predictions.class_names,
                    predictions.probabilities[i],
                    strict=True,
                )
            },
        }
        if predictions.true_classes[i] is not None:
            row["true_class"] = predictions.true_classes[i]
        rows.append(row)
    return rows


def write_predictions(
    predictions: Predictions, output: str | os.PathLike
) -> pathlib.Path:
    """Writes one row per query image as CSV or JSON (by the suffix).

    CSV columns: path, predicted_class, true_class (if known), then
    p_<class> for every support class. JSON: {"classes", "accuracy" (if
    known), "num_inner_steps", "query_batch_size", "bn_mode",
    "predictions": [{"path", "predicted_class", "probabilities": {class:
    p}, "true_class"}]}. Written atomically (a temporary file renamed).
    """
    path = pathlib.Path(output)
    suffix = check_output_path(path)
    rows = _rows(predictions)
    if suffix == ".json":
        values = {"classes": list(predictions.class_names)}
        if predictions.accuracy is not None:
            values["accuracy"] = predictions.accuracy
        values.update(
            num_inner_steps=predictions.num_inner_steps,
            query_batch_size=predictions.query_batch_size,
            bn_mode=predictions.bn_mode,
            predictions=rows,
        )
        text = json.dumps(values, indent=2) + "\n"
    else:
        labelled = predictions.accuracy is not None
        header = ["path", "predicted_class"] + (["true_class"] * labelled)
        header += [f"p_{name}" for name in predictions.class_names]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow(
                [row["path"], row["predicted_class"]]
                + ([row["true_class"]] if labelled else [])
                + [f"{p:.6f}" for p in row["probabilities"].values()]
            )
        text = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
    return path


def summary(predictions: Predictions) -> str:
    """A few lines for the console."""
    counts = ", ".join(
        f"{name} {n}"
        for name, n in zip(
            predictions.class_names, predictions.support_counts, strict=True
        )
    )
    batches = (
        "all in one batch"
        if predictions.query_batch_size is None
        else f"in batches of {predictions.query_batch_size}"
    )
    predicted = predictions.predicted
    tally = ", ".join(
        f"{name} {predicted.count(name)}" for name in predictions.class_names
    )
    lines = [
        f"Adapted to {len(predictions.class_names)} classes (support images: "
        f"{counts}) with {predictions.num_inner_steps} inner steps.",
        f"Scored {len(predictions.paths)} query images {batches} "
        f"(bn_mode={predictions.bn_mode}). Predicted: {tally}.",
    ]
    if predictions.accuracy is not None:
        hits = round(predictions.accuracy * len(predictions.paths))
        lines.append(
            f"Accuracy: {predictions.accuracy:.4f} ({hits}/"
            f"{len(predictions.paths)} query images in class folders)."
        )
    return "\n".join(lines)
