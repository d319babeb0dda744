"""Fixed-task evaluation: CI95, the logit ensemble, the top-k protocol."""

import json

import keras
import numpy as np
import pytest

from helpers import experiments
from mamlpp_tf import checkpointing
from mamlpp_tf import data as data_lib
from mamlpp_tf import evaluation
from mamlpp_tf import experiment
from mamlpp_tf import learner as learner_lib


def test_ci95_is_1_96_population_std_over_sqrt_n():
    # std([0, 1, 0, 1]) = 0.5 (ddof=0), so 1.96 * 0.5 / sqrt(4) = 0.49.
    assert evaluation.ci95([0.0, 1.0, 0.0, 1.0]) == pytest.approx(0.49)
    assert evaluation.ci95([0.7] * 9) == 0.0
    with pytest.raises(ValueError, match="non-empty 1-D array"):
        evaluation.ci95([])


def test_ensemble_scores_the_mean_logits_not_a_vote():
    labels = np.array([[0, 1]])  # 1 task, 2 queries.
    # Each model is right on one query by a little and wrong on the other
    # by a lot, so their mean is wrong on both.
    a = np.array([[[0.1, 0.0], [5.0, 0.0]]])
    b = np.array([[[0.0, 3.0], [0.0, 1.0]]])
    np.testing.assert_allclose(
        evaluation.ensemble_task_accuracies([a], labels), [0.5]
    )
    np.testing.assert_allclose(
        evaluation.ensemble_task_accuracies([a, b], labels), [0.0]
    )
    # With c, a majority vote gets both queries right (1.0); the mean
    # logits still pick class 1 for query 0.
    c = np.array([[[1.0, 0.0], [0.0, 9.0]]])
    np.testing.assert_allclose(
        evaluation.ensemble_task_accuracies([a, b, c], labels), [0.5]
    )
    with pytest.raises(ValueError, match="matching labels"):
        evaluation.ensemble_task_accuracies([a[:, :1]], labels)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny learner, its experiment and the val/test class images."""
    config = experiments.tiny_config(tmp_path_factory.mktemp("tfds"))
    splits = data_lib.load_splits(config.data)
    keras.utils.set_random_seed(0)
    learner = learner_lib.MetaLearner(config.learner)
    return config, splits, learner


def _batches(config, splits, split):
    return data_lib.episode_dataset(
        splits[split],
        config.episode_config(),
        split=split,
        num_tasks=config.num_eval_tasks,
    )


def test_evaluate_batches_gathers_every_task(setup):
    config, splits, learner = setup
    result = evaluation.evaluate_batches(
        learner, _batches(config, splits, "val")
    )
    tasks, queries, ways = config.num_eval_tasks, 2, 2
    assert result.logits.shape == (tasks, queries, ways)
    assert result.labels.shape == (tasks, queries)
    assert result.task_accuracies.shape == (tasks,)
    # Accuracies are those of the returned logits and labels.
    hits = np.argmax(result.logits, -1) == result.labels
    np.testing.assert_allclose(result.task_accuracies, hits.mean(-1))
    assert result.per_step_accuracy.shape == (2,)


# -- The top-k protocol on literal logits ------------------------------------

# 4 tasks of 2 queries (labels 0 then 1) and 2 ways. Epoch 1 (best
# validation) gets task accuracies 1, 1/2, 0, 1; epoch 0 gets 1/2, 1, 1/2, 1
# (argmax of a tie is class 0); their mean logits, worked task by task:
#   task 0: [[-0.5, 0], [0, 1]]     -> 1, 1 (wrong, right)  = 1/2
#   task 1: [[1, 0], [0.5, 1]]      -> 0, 1 (right, right)  = 1
#   task 2: [[1.5, 0.5], [0.5, 0]]  -> 0, 0 (right, wrong)  = 1/2
#   task 3: [[1, 0], [0, 2]]        -> 0, 1 (right, right)  = 1
LITERAL_LABELS = np.array([[0, 1]] * 4)
LITERAL_LOGITS = {
    1: np.array(
        [
            [[2.0, 0.0], [0.0, 1.0]],
            [[2.0, 0.0], [1.0, 0.0]],
            [[0.0, 1.0], [1.0, 0.0]],
            [[1.0, 0.0], [0.0, 3.0]],
        ]
    ),
    0: np.array(
        [
            [[-3.0, 0.0], [0.0, 1.0]],
            [[0.0, 0.0], [0.0, 2.0]],
            [[3.0, 0.0], [0.0, 0.0]],
            [[1.0, 0.0], [0.0, 1.0]],
        ]
    ),
}
LITERAL_TASK_ACCURACIES = {1: [1.0, 0.5, 0.0, 1.0], 0: [0.5, 1.0, 0.5, 1.0]}


class _LiteralLearner:
    """Returns the literal logits of the epoch its store loaded last."""

    strategy = None

    def __init__(self):
        self.epoch = None

    def eval_step(self, batch, num_inner_steps):
        del batch, num_inner_steps
        accuracies = np.array(LITERAL_TASK_ACCURACIES[self.epoch])
        metrics = {
            "loss": 0.5,
            "task_accuracy": accuracies,
            "per_step_accuracy": np.array([accuracies.mean()]),
        }
        return metrics, LITERAL_LOGITS[self.epoch]


class _LiteralStore:
    def __init__(self, learner):
        self.learner = learner
        self.directory = "literal"
        self.entries = [
            checkpointing.TopKEntry(epoch=1, val_accuracy=0.9, val_loss=0.1),
            checkpointing.TopKEntry(epoch=0, val_accuracy=0.6, val_loss=0.4),
        ]

    def load(self, epoch):
        self.learner.epoch = epoch


def test_top_k_summary_matches_values_worked_by_hand():
    learner = _LiteralLearner()
    summary = evaluation.evaluate_top_k(
        learner,
        _LiteralStore(learner),
        lambda: [{"query_y": LITERAL_LABELS}],  # One batch of 4 tasks.
        split="test",
        num_inner_steps=2,
        top_k_ensemble=5,
    )
    # Ensemble task accuracies 1/2, 1, 1/2, 1: mean 0.75, population std
    # 0.25, so 1.96 * 0.25 / sqrt(4) = 0.245.
    assert summary["test_accuracy_mean"] == pytest.approx(0.75)
    assert summary["test_accuracy_ci95"] == pytest.approx(0.245)
    # Epoch 1 alone: 1, 1/2, 0, 1: mean 0.625; deviations 3/8, -1/8, -5/8,
    # 3/8 give a variance of (9 + 1 + 25 + 9) / 64 / 4 = 0.171875, so
    # 1.96 * sqrt(0.171875) / 2 = 0.98 * 0.4145781 = 0.4062865.
    assert summary["single_best_epoch"] == 1
    assert summary["single_best_accuracy_mean"] == pytest.approx(0.625)
    assert summary["single_best_accuracy_ci95"] == pytest.approx(
        0.4062865, rel=1e-6
    )
    assert summary["single_best_loss"] == pytest.approx(0.5)
    assert summary["per_epoch_accuracy_mean"] == {"1": 0.625, "0": 0.75}
    assert summary["ensemble_epochs"] == [1, 0]
    assert summary["ensemble_val_accuracies"] == [0.9, 0.6]
    assert summary["num_test_tasks"] == 4
    assert (summary["ensemble_top_k"], summary["num_eval_inner_steps"]) == (
        5,
        2,
    )


def _perturbed_weights(learner, seed):
    rng = np.random.default_rng(seed)
    for v in learner.model.trainable_variables:
        v.assign(np.asarray(v) + 0.5 * rng.normal(size=v.shape))


def test_top_k_summary_is_the_ensemble_of_the_kept_epochs(setup, tmp_path):
    config, splits, learner = setup
    store = checkpointing.TopKStore(learner, tmp_path, k=2)
    per_epoch = {}
    for epoch, accuracy in [(0, 0.6), (1, 0.9), (2, 0.1)]:
        _perturbed_weights(learner, seed=epoch)
        per_epoch[epoch] = evaluation.evaluate_batches(
            learner, _batches(config, splits, "test")
        )
        store.update(
            checkpointing.TopKEntry(
                epoch=epoch, val_accuracy=accuracy, val_loss=0.0
            )
        )

    summary = evaluation.evaluate_top_k(
        learner,
        store,
        lambda: _batches(config, splits, "test"),
        split="test",
        num_inner_steps=2,
        top_k_ensemble=2,
    )

    # The store reloaded epochs 1 and 0 (not 2): their logits, as they
    # scored when saved (the arithmetic is checked on literal logits in
    # test_top_k_summary_matches_values_worked_by_hand).
    expected = evaluation.ensemble_task_accuracies(
        [per_epoch[1].logits, per_epoch[0].logits], per_epoch[1].labels
    )
    assert summary["ensemble_epochs"] == [1, 0]
    assert summary["test_accuracy_mean"] == pytest.approx(expected.mean())
    assert summary["num_test_tasks"] == config.num_eval_tasks
    assert summary["single_best_epoch"] == 1
    assert summary["single_best_accuracy_mean"] == pytest.approx(
        per_epoch[1].accuracy_mean
    )
    assert summary["num_eval_inner_steps"] == 2
    assert summary["ensemble_top_k"] == 2
    path = evaluation.write_summary(summary, tmp_path)
    assert path.name == "test_summary.json"
    assert json.loads(path.read_text()) == summary


def test_evaluate_top_k_stops_when_asked(setup, tmp_path):
    config, splits, learner = setup
    store = checkpointing.TopKStore(learner, tmp_path, k=1)
    store.update(
        checkpointing.TopKEntry(epoch=0, val_accuracy=0.5, val_loss=0.0)
    )
    summary = evaluation.evaluate_top_k(
        learner,
        store,
        lambda: _batches(config, splits, "test"),
        split="test",
        num_inner_steps=2,
        top_k_ensemble=1,
        should_stop=lambda: True,
    )
    assert summary is None


def test_evaluate_workdir_refuses_what_it_cannot_evaluate(setup, tmp_path):
    config = setup[0]
    with pytest.raises(
        FileNotFoundError, match="has no config.json: it is not a run directory"
    ):
        evaluation.evaluate_workdir(tmp_path)
    assert list(tmp_path.iterdir()) == []
    experiment.write_config(config, tmp_path)
    with pytest.raises(ValueError, match="has no validated epoch yet"):
        evaluation.evaluate_workdir(tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        evaluation.evaluate_workdir(tmp_path, split="train")
