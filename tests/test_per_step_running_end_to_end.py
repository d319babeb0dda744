"""--bn_mode=per_step_running through the apps: train, top-k, evaluate,
export, reload in a TensorFlow-only process (generated glyphs, no
download)."""

import json

import numpy as np
import pytest

from helpers import apps
from helpers import run_saved_model
from mamlpp_tf import checkpointing
from mamlpp_tf import data as data_lib
from mamlpp_tf import experiment
from mamlpp_tf import learner as learner_lib
from mamlpp_tf import reporting

# smoke.cfg (5-way 1-shot, 8 filters, 2 inner steps), cut to 2 epochs of
# 2 meta-steps (first order in epoch 0, second order in epoch 1) and 4
# fixed validation/test tasks.
RUN = (
    f"--flagfile={apps.FLAGS_DIR / 'smoke.cfg'}",
    "--bn_mode=per_step_running",
    "--total_epochs=2",
    "--iterations_per_epoch=2",
    "--first_order_to_second_order_epoch=0",
    "--num_eval_tasks=4",
    "--top_k_ensemble=2",
    "--checkpoint_every=2",
)


@pytest.mark.slow
def test_per_step_running_trains_evaluates_exports_and_reloads(tmp_path):
    workdir = tmp_path / "run"
    result = apps.run(
        "train",
        *RUN,
        f"--workdir={workdir}",
        f"--tfds_data_dir={tmp_path / 'tfds'}",
    )
    assert result.returncode == 0, apps.describe(result)
    config = experiment.read_config(workdir)
    assert config.learner.bn_mode == "per_step_running"

    # Top-k: both epochs kept, each with its own running statistics, which
    # training moved away from their start (mean 0, variance 1) in every
    # slot (one per inner step) and channel.
    learner = learner_lib.MetaLearner(config.learner)
    store = checkpointing.TopKStore(learner, workdir, k=config.top_k_ensemble)
    assert sorted(e.epoch for e in store.entries) == [0, 1]
    best = store.entries[0].epoch
    store.load(best)
    for norm in learner.norm_layers:
        assert norm.moving_mean.shape == (2, 8)
        assert np.all(norm.moving_mean.numpy() != 0.0)
        assert np.all(norm.moving_variance.numpy() != 1.0)

    # mamlpp-evaluate reloads the best epoch, statistics included, and
    # finds the validation loss that training measured with them.
    result = apps.run("evaluate", f"--workdir={workdir}", "--split=val")
    assert result.returncode == 0, apps.describe(result)
    val = json.loads((workdir / "val_summary.json").read_text())
    row = reporting.MetricsCsv(workdir).rows()[best]
    assert val["single_best_epoch"] == best
    assert val["single_best_loss"] == pytest.approx(
        float(row["val_loss"]), rel=1e-5
    )

    export_dir = tmp_path / "exported"
    result = apps.run(
        "export", f"--workdir={workdir}", f"--export_dir={export_dir}"
    )
    assert result.returncode == 0, apps.describe(result)

    # The exported model, in a process without mamlpp_tf, gives the
    # library's evaluation logits on a test task...
    batch = next(
        iter(
            data_lib.episode_dataset(
                data_lib.load_splits(config.data)["test"],
                config.episode_config(),
                split="test",
                num_tasks=config.learner.meta_batch_size,
            )
        )
    )
    _, logits = learner.eval_step(batch)
    task = {k: batch[k][0].numpy() for k in run_saved_model.TASK_KEYS}
    served = run_saved_model.run_in_subprocess(export_dir, task, tmp_path)
    assert served["metadata"]["bn_mode"] == "per_step_running"
    scale = max(1.0, float(np.abs(logits[0]).max()))
    np.testing.assert_allclose(
        served["adapt_and_predict"], logits[0], atol=1e-5 * scale
    )

    # ...and normalises with the running statistics, not the batch's: a
    # query's logits do not depend on the other queries sent with it.
    alone_dir = tmp_path / "alone"
    alone_dir.mkdir()
    alone = run_saved_model.run_in_subprocess(
        export_dir, {**task, "query_x": task["query_x"][:1]}, alone_dir
    )
    np.testing.assert_allclose(
        alone["adapt_and_predict"][0],
        served["adapt_and_predict"][0],
        atol=1e-5 * scale,
    )
