"""The inner loop against closed forms on one-weight toy models."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mamlpp_tf import inner_loop

# A one-weight "network": logits [0, w * x]. With label 0 its cross-entropy
# is softplus(w * x), so the inner update and its derivatives have closed
# forms: w' = w - alpha * sigmoid(w a) * a on a support input a.
A, B = 0.7, -1.3  # Support and query inputs.
W0 = 0.4


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _softplus(z):
    return np.log1p(np.exp(z))


def _toy_forward(calls=None):
    def forward(x, step, params, training):
        if calls is not None:
            calls.append((float(x[0, 0]), step, training))
        logits = tf.concat([tf.zeros_like(x), params["w"] * x], axis=1)
        return logits, []

    return forward


def _task():
    return {
        "support_x": tf.constant([[A]], tf.float64),
        "support_y": tf.constant([0], tf.int32),
        "query_x": tf.constant([[B]], tf.float64),
        "query_y": tf.constant([0], tf.int32),
    }


def _rate(rates):
    return lambda name, step: rates[step]


# Both ways of differentiating the query losses: through the outer tape,
# and each on its own tape with its gradients pulled back (the default in
# meta-training). Every test of `_run` runs with both.
@pytest.fixture(params=[False, True], ids=["outer_tape", "separate"])
def separate(request):
    return request.param


def _run(
    separate, rates, *, second_order, loss_weights=None, use_outer_tape=True,
    calls=None,
    every_step_accuracy=True,
):
    """(result, d loss/d w, d loss/d rates) of the toy inner loop."""
    separate = separate and use_outer_tape
    w = tf.constant(W0, tf.float64)
    rates = tf.constant(rates, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch([w, rates])
        result = inner_loop.run_inner_loop(
            _toy_forward(calls),
            _rate(rates),
            {"w": w},
            _task(),
            num_steps=int(rates.shape[0]),
            adapted_names=["w"],
            second_order=second_order,
            training=True,
            loss_weights=loss_weights,
            outer_tape=tape if use_outer_tape else None,
            every_step_accuracy=every_step_accuracy,
            separate_query_backward=separate,
        )
    if separate:
        grad_w, grad_rates = inner_loop.pull_back(
            tape, [w, rates], result.query_cotangents)
    else:
        grad_w, grad_rates = tape.gradient(result.loss, [w, rates])
    return result, grad_w.numpy(), grad_rates.numpy()


def _closed_form(rates):
    """Fast weights w_0..w_K and d w_{k+1} / d w_k of the toy model."""
    ws, jacobians = [W0], []
    for rate in rates:
        s = _sigmoid(ws[-1] * A)
        jacobians.append(1.0 - rate * A * A * s * (1.0 - s))
        ws.append(ws[-1] - rate * s * A)
    return ws, jacobians


def test_inner_update_is_one_sgd_step_with_per_tensor_rates():
    params = {
        "w": tf.constant(2.0),
        "v": tf.constant(3.0),
        "frozen": tf.constant(5.0),
    }
    grads = {"w": tf.constant(1.0), "v": tf.constant(-2.0)}
    rates = {("w", 3): 0.1, ("v", 3): 0.5}
    updated = inner_loop.inner_update(
        params, grads, lambda n, s: rates[(n, s)], 3
    )
    np.testing.assert_allclose(updated["w"], 1.9)
    np.testing.assert_allclose(updated["v"], 4.0)
    assert updated["frozen"] is params["frozen"]  # Not adapted.
    assert updated is not params
    np.testing.assert_allclose(params["w"], 2.0)


@pytest.mark.parametrize("second_order", [True, False])
def test_quadratic_meta_gradient_matches_closed_form(second_order):
    # Inner a w^2 / 2, outer b w'^2 / 2, w' = (1 - alpha a) w, so
    # dL/dw = b (1 - alpha a)^2 w (second order), b (1 - alpha a) w (first).
    a, b, alpha = 2.0, 3.0, 0.1
    w = tf.constant(1.5, tf.float64)
    with tf.GradientTape() as outer:
        outer.watch(w)
        with tf.GradientTape() as inner:
            inner.watch(w)
            inner_loss = a * w**2 / 2
        grad = inner.gradient(inner_loss, w)
        if not second_order:
            grad = tf.stop_gradient(grad)
        fast = inner_loop.inner_update(
            {"w": w}, {"w": grad}, lambda n, s: alpha, 0
        )
        outer_loss = b * fast["w"] ** 2 / 2
    power = 2 if second_order else 1
    np.testing.assert_allclose(
        outer.gradient(outer_loss, w), b * (1 - alpha * a) ** power * 1.5
    )


def test_second_order_meta_gradient_matches_closed_form(separate):
    rates = [0.5, 0.8]
    result, grad_w, grad_rates = _run(separate, rates, second_order=True)
    ws, jac = _closed_form(rates)
    outer = _sigmoid(ws[2] * B) * B  # d softplus(w2 b) / d w2
    np.testing.assert_allclose(result.loss, _softplus(ws[2] * B), rtol=1e-12)
    np.testing.assert_allclose(result.fast_weights["w"], ws[2], rtol=1e-12)
    np.testing.assert_allclose(grad_w, outer * jac[0] * jac[1], rtol=1e-10)
    np.testing.assert_allclose(
        grad_rates,
        [
            outer * jac[1] * -_sigmoid(ws[0] * A) * A,
            outer * -_sigmoid(ws[1] * A) * A,
        ],
        rtol=1e-10,
    )


@pytest.mark.parametrize("use_outer_tape", [True, False])
def test_first_order_meta_gradient_matches_the_stop_gradient_formula(
    use_outer_tape, separate,
):
    rates = [0.5, 0.8]
    result, grad_w, grad_rates = _run(
        separate, rates, second_order=False, use_outer_tape=use_outer_tape
    )
    ws, _ = _closed_form(rates)
    outer = _sigmoid(ws[2] * B) * B
    np.testing.assert_allclose(result.loss, _softplus(ws[2] * B), rtol=1e-12)
    np.testing.assert_allclose(grad_w, outer, rtol=1e-10)
    # The LSLR rates still learn: d w2 / d alpha_k = -grad_k (stopped).
    np.testing.assert_allclose(
        grad_rates,
        [
            outer * -_sigmoid(ws[0] * A) * A,
            outer * -_sigmoid(ws[1] * A) * A,
        ],
        rtol=1e-10,
    )
    _, second_order_grad_w, _ = _run(separate, rates, second_order=True)
    assert abs(grad_w - second_order_grad_w) > 1e-3


def test_multi_step_loss_weights_the_query_loss_of_every_step(separate):
    rates = [0.5, 0.8]
    weights = tf.constant([0.3, 0.7], tf.float64)
    result, grad_w, _ = _run(separate, rates, second_order=True,
                             loss_weights=weights)
    ws, jac = _closed_form(rates)
    step_losses = [_softplus(ws[1] * B), _softplus(ws[2] * B)]
    np.testing.assert_allclose(result.step_losses, step_losses, rtol=1e-12)
    np.testing.assert_allclose(
        result.loss, 0.3 * step_losses[0] + 0.7 * step_losses[1], rtol=1e-12
    )
    np.testing.assert_allclose(
        grad_w,
        (
            0.3 * _sigmoid(ws[1] * B) * B * jac[0]
            + 0.7 * _sigmoid(ws[2] * B) * B * jac[0] * jac[1]
        ),
        rtol=1e-10,
    )


@pytest.mark.parametrize("loss_weights", [None, [0.0, 1.0]])
def test_final_step_only_skips_earlier_query_losses(loss_weights, separate):
    if loss_weights is not None:
        loss_weights = tf.constant(loss_weights, tf.float64)
    rates = [0.5, 0.8]
    result, grad_w, _ = _run(
        separate, rates, second_order=True, loss_weights=loss_weights
    )
    ws, jac = _closed_form(rates)
    np.testing.assert_allclose(
        result.step_losses, [0.0, _softplus(ws[2] * B)], rtol=1e-12
    )
    np.testing.assert_allclose(
        grad_w, _sigmoid(ws[2] * B) * B * jac[0] * jac[1], rtol=1e-10
    )


def test_accuracy_is_measured_after_every_step(separate):
    # Query label 0 is right while w' * B < 0, i.e. while w' > 0. Big
    # rates push w below 0 after the first step.
    result, _, _ = _run(separate, [0.1, 5.0, 5.0], second_order=False)
    ws, _ = _closed_form([0.1, 5.0, 5.0])
    expected = [float(w * B < 0) for w in ws[1:]]
    assert expected == [1.0, 0.0, 0.0]  # The case exercises both outcomes.
    np.testing.assert_array_equal(result.step_accuracies, expected)


@pytest.mark.parametrize("loss_weights", [None, [0.0, 0.0, 1.0]])
def test_without_every_step_accuracy_only_counted_query_passes_run(
    loss_weights, separate
):
    if loss_weights is not None:
        loss_weights = tf.constant(loss_weights, tf.float64)
    rates = [0.5, 0.8, 0.2]
    calls = []
    result, grad_w, grad_rates = _run(
        separate, rates, second_order=True, loss_weights=loss_weights,
        calls=calls,
        every_step_accuracy=False,
    )
    # Support at every step, the query only after the last one.
    assert calls == [(A, 0, True), (A, 1, True), (A, 2, True), (B, 2, True)]
    ws, _ = _closed_form(rates)
    assert np.isnan(result.step_accuracies[:2]).all()
    assert result.step_accuracies[2] == float(ws[3] * B < 0)
    reference, ref_grad_w, ref_grad_rates = _run(
        separate, rates, second_order=True, loss_weights=loss_weights,
    )
    np.testing.assert_array_equal(result.step_losses, reference.step_losses)
    np.testing.assert_array_equal(grad_w, ref_grad_w)
    np.testing.assert_array_equal(grad_rates, ref_grad_rates)


def test_without_every_step_accuracy_weighted_steps_are_still_scored(separate):
    calls = []
    result, _, _ = _run(
        separate, [0.1, 5.0, 5.0], second_order=True,
        loss_weights=tf.constant([0.2, 0.0, 0.8], tf.float64), calls=calls,
        every_step_accuracy=False,
    )
    assert [c for c in calls if c[0] == B] == [(B, 0, True), (B, 2, True)]
    np.testing.assert_array_equal(
        np.isnan(result.step_accuracies), [False, True, False]
    )


def test_step_k_runs_support_then_query_through_slot_k(separate):
    calls = []
    _run(
        separate, [0.5, 0.8, 0.2],
        second_order=True,
        loss_weights=tf.constant([0.2, 0.3, 0.5], tf.float64),
        calls=calls,
    )
    assert calls == [
        (A, 0, True),
        (B, 0, True),
        (A, 1, True),
        (B, 1, True),
        (A, 2, True),
        (B, 2, True),
    ]


def test_cross_entropy_and_accuracy_match_numpy():
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    labels = np.array([0, 1], np.int32)
    log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    np.testing.assert_allclose(
        inner_loop.cross_entropy(tf.constant(logits), tf.constant(labels)),
        -np.mean(log_probs[[0, 1], labels]),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        inner_loop.accuracy(tf.constant(logits), tf.constant(labels)), 0.5
    )
