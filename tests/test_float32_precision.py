"""float32 against float64: every meta-gradient and inner-step gradient.

One second-order MAML++ meta-step (LSLR, MSL, per-step BN) runs in float32
and in float64 from the same weights and batch; each tensor is compared per
inner step: the support-set gradient of every adapted tensor at every step,
and every meta-gradient, the LSLR rates' entry by entry (one entry a step).

The tolerance comes from the float64 computation itself, not from a float32
run. A float32 op returns the exact result for operands perturbed by a few
units of roundoff (backward stability), so a float32 result is off by about
the change that float32-sized perturbations cause in the exact function. We
measure that change in float64: every weight and input is multiplied by
(1 + u * xi), u = 2**-24 (the unit roundoff of float32), xi = +-1 at random,
and the relative change of each result, averaged (RMS) over a few draws, is
its sensitivity s. Rounding happens at every op of the meta-step, not only
at its inputs; those roundings are independent, so their effects add in
quadrature: sqrt(number of rounding stages) times s. A stage is one op
(conv, batch norm, activation, pooling, dense, loss) in one of the passes
that the meta-gradient differentiates through: forward, backward and the
backward of the backward, for the support set of each inner step and the
query set. The bound then allows a factor ACCUMULATION for the length of the
sums inside each op (a sum of n terms rounds with error up to about
sqrt(n) * u in the typical case; see ACCUMULATION).

Mini-ImageNet-sized figures (84x84x3, 48 filters, 15 queries) come from
tools/precision_f32_vs_f64.py, too slow for the unit suite.
"""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

import mamlpp_tf
from precision_f32_vs_f64 import perturbed_results  # tools/
from precision_f32_vs_f64 import results

# The unit roundoff of float32 (half its machine epsilon).
FLOAT32_ROUNDOFF = 2.0**-24
# Sums inside one op: the longest, a filter gradient of conv0, adds
# N*H*W = 10*16*16 = 2560 terms (query set); the typical rounding error of
# such a sum is about sqrt(n) u, sqrt(2560) < 51 units of roundoff.
ACCUMULATION = 51.0
# Draws of the float64 perturbation averaged into the sensitivity.
NUM_DRAWS = 2

NUM_STEPS = 2
NUM_STAGES = 4
CONFIG = mamlpp_tf.mamlpp(
    num_ways=5,
    num_shots=1,
    num_queries=2,
    meta_batch_size=1,
    image_shape=(16, 16, 3),
    num_filters=8,
    num_stages=NUM_STAGES,
    num_inner_steps=NUM_STEPS,
    num_eval_inner_steps=NUM_STEPS,
    first_order_to_second_order_epoch=-1,  # Second order at epoch 0.
    inner_lr_init=0.01,  # The mini-ImageNet flagfile's.
)
# Ops per stage (conv, BN, LeakyReLU, max-pool), plus dense and the loss.
OPS_PER_PASS = 4 * NUM_STAGES + 2
# Forward, backward and backward-of-backward of the support pass of every
# step, and forward + backward of every query pass (MSL), then the outer
# backward through it all: at most 3 passes per support and query pass.
NUM_ROUNDING_STAGES = 3 * OPS_PER_PASS * 2 * NUM_STEPS


def _learner(dtype, mixed_precision=None, like=None):
    """A learner in `dtype`; with `like`, holding `like`'s weights."""
    config = dataclasses.replace(CONFIG, dtype=dtype)
    learner = mamlpp_tf.MetaLearner(config, mixed_precision=mixed_precision)
    if like is not None:
        for ours, theirs in zip(learner.trainable_variables,
                                like.trainable_variables, strict=True):
            ours.assign(tf.cast(tf.convert_to_tensor(theirs), dtype))
    return learner


@pytest.fixture(scope="module")
def float32_learner():
    keras.utils.set_random_seed(0)
    return _learner("float32")


@pytest.fixture(scope="module")
def reference(float32_learner):
    """(float64 results, float64 results of NUM_DRAWS perturbed copies)."""
    learner = _learner("float64", like=float32_learner)
    batch = _batch()
    rng = np.random.default_rng(1)
    draws = [perturbed_results(learner, batch, rng) for _ in range(NUM_DRAWS)]
    return results(learner, batch), draws


def _batch():
    """Pixels uniform in [0, 1], ImageNet-normalised (mini-ImageNet's)."""
    rng = np.random.default_rng(0)
    mean, std = np.array((0.485, 0.456, 0.406)), np.array((0.229, 0.224, 0.225))

    def images(count):
        x = rng.uniform(size=(1, count, *CONFIG.image_shape))
        return (x - mean) / std

    ways = CONFIG.num_ways
    return {
        "support_x": images(ways * CONFIG.num_shots),
        "support_y": np.repeat(np.arange(ways, dtype=np.int32), 1)[None],
        "query_x": images(ways * CONFIG.num_queries),
        "query_y": np.repeat(
            np.arange(ways, dtype=np.int32), CONFIG.num_queries
        )[None],
    }


def _relative(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _is_removed_by_batch_norm(key):
    # A conv bias (and its rate) cannot change the loss: BN subtracts it.
    # Its exact gradient is 0 and both dtypes return roundoff noise, which
    # has no relative error. tests/test_golden.py bounds it absolutely.
    return "/conv" in key and "/bias" in key


def _compare(learner, reference):
    """[(key, relative error, float64 sensitivity)] of every tensor."""
    exact, draws = reference
    ours = results(learner, _batch())
    rows = []
    for key, value in exact.items():
        if _is_removed_by_batch_norm(key):
            continue
        changes = [_relative(d[key], value) for d in draws]
        sensitivity = float(np.sqrt(np.mean(np.square(changes))))
        rows.append((key, _relative(ours[key], value), sensitivity))
    return rows


def _beyond_bound(rows):
    """The rows whose error exceeds the rounding bound (printed)."""
    factor = ACCUMULATION * np.sqrt(NUM_ROUNDING_STAGES)
    beyond = []
    for key, error, sensitivity in rows:
        scale = max(sensitivity, FLOAT32_ROUNDOFF)
        print(f"{key:40s} error {error:9.2e}  sensitivity {sensitivity:9.2e}"
              f"  error/sensitivity {error / scale:7.1f}")
        if not error <= factor * scale:
            beyond.append((key, error, factor * scale))
    return beyond


@pytest.fixture(scope="module")
def comparison(float32_learner, reference):
    return _compare(float32_learner, reference)


def test_every_tensor_and_step_is_compared(comparison):
    keys = {row[0] for row in comparison}
    for step in range(NUM_STEPS):
        assert f"meta/inner_lr/conv0/kernel/step {step}" in keys
        assert f"inner/conv0/kernel/step {step}" in keys
    assert "meta/network/norm3/gamma" in keys
    assert "meta/network/dense/kernel" in keys


def test_float32_is_within_its_rounding_bound_of_float64(comparison):
    assert _beyond_bound(comparison) == []


def test_the_bound_rejects_bfloat16_matmuls(float32_learner, reference):
    # The check can fail: bfloat16 convolutions round to 2**-8, 2**16 times
    # float32's roundoff, far beyond the bound.
    learner = _learner("float32", "bfloat16", like=float32_learner)
    beyond = _beyond_bound(_compare(learner, reference))
    assert {"meta/network/conv0/kernel", "inner/conv0/kernel/step 0"} <= {
        key for key, _, _ in beyond
    }
