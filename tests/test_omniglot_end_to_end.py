"""Real Omniglot through the three apps: train, evaluate, export, reload.

The paper's MAML++ 5-way 1-shot flagfile, shrunk on the command line to a
few meta-steps, exactly as a user would override it.
"""

import json

import numpy as np
import pytest

from helpers import apps
from helpers import run_saved_model
from mamlpp_tf import checkpointing
from mamlpp_tf import data as data_lib
from mamlpp_tf import experiment
from mamlpp_tf import learner as learner_lib

FLAGFILE = apps.FLAGS_DIR / "maml++_omniglot_5way_1shot.cfg"
# 2 epochs x 3 meta-steps of a small network, 4 fixed val/test tasks.
SHRINK = (
    "--num_filters=8",
    "--num_inner_steps=2",
    "--num_eval_inner_steps=2",
    "--meta_batch_size=2",
    "--total_epochs=2",
    "--iterations_per_epoch=3",
    "--num_eval_tasks=4",
    "--top_k_ensemble=2",
    "--log_every=1",
)


@pytest.mark.slow
def test_omniglot_train_evaluate_export_reload(omniglot_dir, tmp_path):
    workdir, tfds_dir = tmp_path / "run", tmp_path / "tfds"
    result = apps.run(
        "train",
        f"--flagfile={FLAGFILE}",
        f"--data_dir={omniglot_dir}",
        f"--tfds_data_dir={tfds_dir}",
        f"--workdir={workdir}",
        *SHRINK,
    )
    assert result.returncode == 0, apps.describe(result)
    config = experiment.read_config(workdir)
    assert config.data.dataset == "omniglot"
    assert config.learner.learn_inner_lr and config.learner.num_queries == 1

    result = apps.run("evaluate", f"--workdir={workdir}")
    assert result.returncode == 0, apps.describe(result)
    summary = json.loads((workdir / "test_summary.json").read_text())
    assert summary["num_test_tasks"] == 4
    assert 0.0 <= summary["test_accuracy_mean"] <= 1.0

    export_dir = tmp_path / "exported"
    result = apps.run(
        "export", f"--workdir={workdir}", f"--export_dir={export_dir}"
    )
    assert result.returncode == 0, apps.describe(result)

    # The library, with the exported (best) weights, on a real test task.
    learner = learner_lib.MetaLearner(config.learner)
    store = checkpointing.TopKStore(learner, workdir, k=config.top_k_ensemble)
    store.load(store.entries[0].epoch)
    test_images = data_lib.load_splits(config.data)["test"]
    batch = next(
        iter(
            data_lib.episode_dataset(
                test_images,
                config.episode_config(),
                split="test",
                num_tasks=config.learner.meta_batch_size,
            )
        )
    )
    _, logits = learner.eval_step(batch, config.learner.num_inner_steps)
    task = {k: batch[k][0].numpy() for k in run_saved_model.TASK_KEYS}

    served = run_saved_model.run_in_subprocess(export_dir, task, tmp_path)

    # Two graphs of the same float32 maths (the in-graph task loop here,
    # the serving function there) fuse ops differently, and 5 adaptation
    # steps carry the rounding: agreement to 1e-5 of the logits' scale.
    scale = max(1.0, float(np.abs(logits[0]).max()))
    np.testing.assert_allclose(
        served["adapt_and_predict"], logits[0], atol=1e-5 * scale
    )
    np.testing.assert_array_equal(
        np.argmax(served["adapt_and_predict"], -1), np.argmax(logits[0], -1)
    )
