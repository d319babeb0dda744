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
from mamlpp_tf import export
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
# Float32 ulps of the logits' scale that one conv stage (conv, batch norm,
# ReLU, pooling) may move by when its reductions add in another order.
FLOAT32_ULPS = 4


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
    task = {k: batch[k][0].numpy() for k in run_saved_model.TASK_KEYS}

    served = run_saved_model.run_in_subprocess(export_dir, task, tmp_path)

    # The same graph in this process: the serving functions that export
    # traced, built on the same weights. Same graph, same CPU, same kernels,
    # so the only rounding left between the two processes is the order in
    # which a kernel's threads add their partial sums; at most a few float32
    # ulps of the logits' scale per op, carried through the inner steps.
    # eval_step's in-graph task loop is another graph (other op fusions):
    # tests/test_learner.py and tests/test_export.py hold adapt_and_predict
    # to it at tiny shapes.
    serving = export.serving_metadata(
        config.learner, config.episode_config().normalization
    )
    module = export.FewShotServing(learner, serving)
    logits = module.adapt_and_predict(
        task["support_x"], task["support_y"], task["query_x"]
    )["logits"].numpy()
    scale = float(np.abs(logits).max())
    # 2 inner steps + the query pass, 4 conv stages each, FLOAT32_ULPS per
    # stage: 48 ulps, 5.7e-6 of the scale.
    ulps = FLOAT32_ULPS * 4 * (config.learner.num_eval_inner_steps + 1)
    eps = np.finfo(np.float32).eps
    np.testing.assert_allclose(
        served["adapt_and_predict"], logits, atol=ulps * eps * scale
    )
