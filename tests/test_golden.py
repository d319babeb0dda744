"""Fidelity to the authors' PyTorch MAML++: one meta-step, every gradient.

../shared/golden/httym_omniglot_5w1s_step.npz holds their initial weights,
two episodes, their meta-loss and every meta-gradient (see its README).
"""

import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf

import mamlpp_tf

GOLDEN = pathlib.Path(
    os.environ.get(
        "MAMLPP_GOLDEN",
        pathlib.Path(__file__).resolve().parents[1].parent
        / "shared/golden/httym_omniglot_5w1s_step.npz",
    )
)
PREFIX = "classifier.layer_dict."
LSLR_PREFIX = "inner_loop_optimizer.names_learning_rates_dict.layer_dict-"


def _torch_to_ours(golden, kind):
    """Maps the authors' tensors onto our names ("network/..."), HWIO."""
    out = {}
    for i in range(4):
        conv = f"{PREFIX}conv{i}."
        out[f"network/conv{i}/kernel"] = np.transpose(
            golden[f"{kind}/{conv}conv.weight"], (2, 3, 1, 0)
        )
        out[f"network/conv{i}/bias"] = golden[f"{kind}/{conv}conv.bias"]
        out[f"network/norm{i}/gamma"] = golden[
            f"{kind}/{conv}norm_layer.weight"
        ]
        out[f"network/norm{i}/beta"] = golden[f"{kind}/{conv}norm_layer.bias"]
        for ours, theirs in (("kernel", "weight"), ("bias", "bias")):
            rates = golden[f"{kind}/{LSLR_PREFIX}conv{i}-conv-{theirs}"]
            out[f"inner_lr/conv{i}/{ours}"] = rates[:5]  # Entry 5 is unused.
    out["network/dense/kernel"] = golden[f"{kind}/{PREFIX}linear.weights"].T
    out["network/dense/bias"] = golden[f"{kind}/{PREFIX}linear.bias"]
    for ours, theirs in (("kernel", "weights"), ("bias", "bias")):
        rates = golden[f"{kind}/{LSLR_PREFIX}linear-{theirs}"]
        out[f"inner_lr/dense/{ours}"] = rates[:5]
    return out


def _episodes(golden):
    def images(
        x,
    ):  # [tasks, ways, shots, C, H, W] -> [tasks, ways*shots, H, W, C]
        t, n, k, c, h, w = x.shape
        return np.transpose(x, (0, 1, 2, 4, 5, 3)).reshape(t, n * k, h, w, c)

    def labels(y):
        return y.reshape(y.shape[0], -1).astype(np.int32)

    return {
        "support_x": tf.constant(images(golden["xs"])),
        "support_y": tf.constant(labels(golden["ys"])),
        "query_x": tf.constant(images(golden["xt"])),
        "query_y": tf.constant(labels(golden["yt"])),
    }


def _load_golden(path: pathlib.Path) -> dict:
    """The golden arrays. A missing file fails under CI (`.ci/run` sets
    CI=true), so that CI never passes with this test skipped; elsewhere it
    skips."""
    if not path.is_file():
        message = f"the golden file {path} is missing (set MAMLPP_GOLDEN)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return dict(np.load(path))


@pytest.fixture(scope="module")
def golden():
    return _load_golden(GOLDEN)


def test_a_missing_golden_file_fails_under_ci_and_skips_elsewhere(
    monkeypatch, tmp_path
):
    missing = tmp_path / "missing.npz"
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="golden file .* missing"):
        _load_golden(missing)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="golden file .* missing"):
        _load_golden(missing)


def _loaded_learner(golden, fused_batch_norm=False,
                    separate_query_backward=True, **overrides):
    config = mamlpp_tf.mamlpp(
        num_ways=5,
        num_shots=1,
        num_queries=1,
        meta_batch_size=2,
        first_order_to_second_order_epoch=-1,
        **overrides,
    )
    learner = mamlpp_tf.MetaLearner(
        config, fused_batch_norm=fused_batch_norm,
        separate_query_backward=separate_query_backward,
    )
    init = _torch_to_ours(golden, "init")
    names = learner.trainable_variable_names
    assert sorted(names) == sorted(init)
    for name, variable in zip(names, learner.trainable_variables):
        variable.assign(init[name])
    return learner


def _relative_gradient_difference(learner, golden):
    """(loss, relative difference of all the gradients but conv biases)."""
    loss, grads = learner.compute_meta_gradients(_episodes(golden), epoch=0)
    reference = _torch_to_ours(golden, "grad")
    ours = dict(
        zip(learner.trainable_variable_names, [g.numpy() for g in grads])
    )
    diff_sq = ref_sq = 0.0
    for name, ref in reference.items():
        if not (name.startswith("network/conv") and name.endswith("/bias")):
            diff_sq += float(np.sum((ours[name] - ref) ** 2))
            ref_sq += float(np.sum(ref**2))
    return float(loss), np.sqrt(diff_sq) / np.sqrt(ref_sq)


def test_fused_batch_norm_stays_close_to_the_authors(golden):
    # The opt-in fused kernels are less precise in float32 on CPU; bound it.
    loss, relative = _relative_gradient_difference(
        _loaded_learner(golden, fused_batch_norm=True), golden
    )
    print(
        f"golden, fused batch norm: loss {loss:.7f}; gradient relative "
        f"difference {relative:.2e}"
    )
    np.testing.assert_allclose(loss, float(golden["loss"]), rtol=1e-5)
    assert relative < 3e-3


# Both ways of differentiating the query losses (see
# `meta_step.task_meta_gradients`); the first is the default.
@pytest.mark.parametrize("separate_query_backward", [True, False],
                         ids=["separate_query_backward", "through_tape"])
def test_meta_loss_and_every_gradient_match_the_authors(
    golden, separate_query_backward,
):
    learner = _loaded_learner(
        golden, separate_query_backward=separate_query_backward
    )
    np.testing.assert_allclose(
        mamlpp_tf.msl_weights(5, 0, 10), golden["msl"], rtol=1e-6
    )
    loss, grads = learner.compute_meta_gradients(_episodes(golden), epoch=0)
    np.testing.assert_allclose(float(loss), float(golden["loss"]), rtol=1e-5)

    reference = _torch_to_ours(golden, "grad")
    ours = dict(
        zip(learner.trainable_variable_names, [g.numpy() for g in grads])
    )
    diff_sq = ref_sq = 0.0
    for name, ref in reference.items():
        got = ours[name]
        assert got.shape == ref.shape, name
        if name.startswith("network/conv") and name.endswith("/bias"):
            # BN removes a conv bias: its true gradient is 0, theirs is noise.
            np.testing.assert_allclose(got, 0.0, atol=1e-4, err_msg=name)
            continue
        diff_sq += float(np.sum((got - ref) ** 2))
        ref_sq += float(np.sum(ref**2))
        # Each tensor on its own, loosely: catches a swapped mapping.
        rel = np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-12)
        assert rel < 1e-2 or np.linalg.norm(ref) < 1e-6, (name, rel)
    relative = np.sqrt(diff_sq) / np.sqrt(ref_sq)
    print(
        f"golden: loss {float(loss):.7f} vs {float(golden['loss']):.7f}; "
        f"gradient relative difference {relative:.2e}"
    )
    assert relative < 1e-3


def test_first_order_differs_from_the_authors_second_order(golden):
    # The same comparison must fail for the wrong derivative order.
    learner = _loaded_learner(golden, second_order=False)
    _, grads = learner.compute_meta_gradients(_episodes(golden), epoch=0)
    reference = _torch_to_ours(golden, "grad")
    ours = dict(
        zip(learner.trainable_variable_names, [g.numpy() for g in grads])
    )
    name = "network/conv1/kernel"
    rel = np.linalg.norm(ours[name] - reference[name]) / np.linalg.norm(
        reference[name]
    )
    assert rel > 1e-2
