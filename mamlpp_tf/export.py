"""A SavedModel that adapts to new classes inside any TensorFlow runtime.

Signatures (one task per call; N = the trained num_ways):

    adapt_and_predict(support_x float32 [n_s, H, W, C],
                      support_y int32 [n_s] in [0, N),
                      query_x float32 [n_q, H, W, C]) -> {"logits": [n_q, N]}
        The evaluation protocol: `num_eval_inner_steps` first-order SGD
        steps on the support set with the LSLR rates and per-step batch
        norm, through the inner loop that `eval_step` runs
        (`inner_loop.adapt`), then the query set through the adapted
        network.
    metadata() -> {"json": string, "image_shape": int32 [3],
                   "num_ways": int32, "num_inner_steps": int32}
        What a caller needs to build a valid request: `serving_metadata`,
        as JSON, and its main fields as tensors. It names no class.

There is no signature that classifies without a support set: the
meta-initialisation is trained to be adapted, and its logits before
adaptation name no class (serving format 1 had such a `predict`; it was
removed in format 2). Every prediction goes through `adapt_and_predict`.

Images are preprocessed as in training (`data.preprocessing`; described
in the metadata). The SavedModel needs only TensorFlow:
`tf.saved_model.load(path)` in a process that never imports mamlpp_tf.
`assets.extra/mamlpp_export.json` records the experiment config, which
weights were exported and the serving metadata.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil

import tensorflow as tf

from mamlpp_tf import checkpointing
from mamlpp_tf import config as config_lib
from mamlpp_tf import experiment
from mamlpp_tf import learner as learner_lib
from mamlpp_tf.data import preprocessing

log = logging.getLogger(__name__)

WEIGHTS = ("best", "latest")
SIGNATURES = ("adapt_and_predict", "metadata")
METADATA_PATH = os.path.join("assets.extra", "mamlpp_export.json")
# Bumped whenever the signatures or the serving metadata change meaning.
# 2: the `predict` signature (meta-weights, no adaptation) was removed.
SERVING_FORMAT_VERSION = 2
# Formats whose adapt_and_predict and metadata mean what format 2's do.
READABLE_FORMAT_VERSIONS = (1, 2)


def serving_metadata(
    config: config_lib.MetaLearnerConfig, normalization: str
) -> dict:
    """What a request to the exported model must match, as plain values.

    Args:
      config: the exported learner's config.
      normalization: the episodes' pixel normalisation ("none" or
        "imagenet"), part of the preprocessing.

    Returns:
      format_version, image_shape [H, W, C], num_ways (the classes of
      every request), num_shots and num_queries (per class in training:
      with transductive batch norm the statistics of a batch depend on its
      size and mix), num_inner_steps (what adapt_and_predict runs, the
      config's num_eval_inner_steps), bn_mode, and preprocessing
      (`data.preprocessing.describe`). No class names.
    """
    return {
        "format_version": SERVING_FORMAT_VERSION,
        "image_shape": list(config.image_shape),
        "num_ways": config.num_ways,
        "num_shots": config.num_shots,
        "num_queries": config.num_queries,
        "num_inner_steps": config.num_eval_inner_steps,
        "bn_mode": config.bn_mode,
        "preprocessing": preprocessing.describe(
            config.image_shape, normalization
        ),
    }


class FewShotServing(tf.Module):
    """The learner's variables and its serving functions.

    Args:
      learner: a `MetaLearner` holding the weights to export.
      serving: its `serving_metadata`.
    """

    def __init__(self, learner: learner_lib.MetaLearner, serving: dict):
        super().__init__(name="few_shot_serving")
        # Track the tf.Variables under the Keras variables, which the traced
        # functions capture, so that the SavedModel stores them.
        self._model_variables = [v.value for v in learner.model.variables]
        self._rate_variables = []
        if learner.inner_rates is not None:
            self._rate_variables = [
                v.value for v in learner.inner_rates.variables
            ]
        steps = learner.config.num_eval_inner_steps
        images = tf.TensorSpec([None, *learner.config.image_shape], tf.float32)
        labels = tf.TensorSpec([None], tf.int32)

        @tf.function(input_signature=[images, labels, images])
        def adapt_and_predict(support_x, support_y, query_x):
            fast_weights = learner.adapt(support_x, support_y, steps)
            logits = learner.predict(query_x, fast_weights, steps)
            return {"logits": logits}

        text = json.dumps(serving, sort_keys=True)

        @tf.function(input_signature=[])
        def metadata():
            return {
                "json": tf.constant(text),
                "image_shape": tf.constant(serving["image_shape"], tf.int32),
                "num_ways": tf.constant(serving["num_ways"], tf.int32),
                "num_inner_steps": tf.constant(
                    serving["num_inner_steps"], tf.int32
                ),
            }

        self.adapt_and_predict = adapt_and_predict
        self.metadata = metadata


def save(
    learner: learner_lib.MetaLearner,
    export_dir: str | os.PathLike,
    metadata: dict,
    *,
    normalization: str,
) -> pathlib.Path:
    """Writes the SavedModel of `learner` to a new `export_dir`.

    It is written next to `export_dir` and renamed into place, so a crash
    leaves no half-written model under that name.

    Args:
      learner: the weights to export.
      export_dir: a new (or empty) folder.
      metadata: written to `METADATA_PATH`, with the serving metadata
        added under "serving".
      normalization: the training episodes' pixel normalisation
        (`EpisodeConfig.normalization`), recorded in the serving metadata.

    Raises:
      FileExistsError: `export_dir` exists and is not empty.
    """
    export_dir = pathlib.Path(export_dir)
    if export_dir.exists() and (
        not export_dir.is_dir() or any(export_dir.iterdir())
    ):
        raise FileExistsError(
            f"export_dir {str(export_dir)!r} exists and is not an empty "
            "folder; pass a new --export_dir (nothing was overwritten)."
        )
    export_dir.parent.mkdir(parents=True, exist_ok=True)
    temporary = export_dir.with_name(export_dir.name + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    serving = serving_metadata(learner.config, normalization)
    module = FewShotServing(learner, serving)
    signatures = {
        name: getattr(module, name).get_concrete_function()
        for name in SIGNATURES
    }
    tf.saved_model.save(
        module,
        str(temporary),
        signatures=signatures,
    )
    metadata_path = temporary / METADATA_PATH
    metadata_path.parent.mkdir(parents=True, exist_ok=True)
    metadata_path.write_text(
        json.dumps({**metadata, "serving": serving}, indent=2) + "\n",
        encoding="utf-8",
    )
    os.replace(temporary, export_dir)
    return export_dir


def export_workdir(
    workdir: str | os.PathLike,
    export_dir: str | os.PathLike,
    *,
    weights: str = "best",
) -> pathlib.Path:
    """Exports a run directory's weights as a SavedModel.

    Args:
      workdir: a directory written by `train_and_evaluate`.
      export_dir: a new (or empty) folder for the SavedModel.
      weights: "best", the epoch with the best validation accuracy (the
        single best model of the test protocol), or "latest", the newest
        training checkpoint.

    Returns:
      `export_dir`.

    Raises:
      FileNotFoundError: `workdir` holds no experiment.
      FileExistsError: `export_dir` is not empty.
      ValueError: a bad `weights`, or no such weights in `workdir` yet.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}.")
    config = experiment.read_config(workdir)
    if config is None:
        raise FileNotFoundError(
            f"{str(workdir)!r} has no {experiment.CONFIG_FILENAME}: it is not "
            "a run directory. Train first with mamlpp-train."
        )
    learner = learner_lib.MetaLearner(config.learner)
    metadata = {
        "weights": weights,
        "config": config.to_dict(),
        "num_inner_steps": config.learner.num_eval_inner_steps,
    }
    if weights == "best":
        top_k = checkpointing.TopKStore(
            learner, workdir, k=config.top_k_ensemble
        )
        if not top_k.entries:
            raise ValueError(
                f"{str(workdir)!r} has no validated epoch yet; train for an "
                "epoch first, or export --weights=latest."
            )
        best = top_k.entries[0]
        top_k.load(best.epoch)
        metadata.update(epoch=best.epoch, val_accuracy=best.val_accuracy)
    else:
        progress = checkpointing.TrainCheckpoint(
            learner, workdir, keep=config.keep_checkpoints
        ).restore_latest()
        if progress is None:
            raise ValueError(f"{str(workdir)!r} has no training checkpoint.")
        metadata.update(epoch=progress.epoch, iteration=progress.iteration)
    path = save(
        learner,
        export_dir,
        metadata,
        normalization=config.episode_config().normalization,
    )
    log.info(
        "Exported the %s weights (epoch %d) of %s to %s.",
        weights,
        metadata["epoch"],
        workdir,
        path,
    )
    return path
