"""Central finite differences of a learner's meta-loss, for gradient tests."""

import numpy as np


def assert_meta_gradients_match(learner, batch, grads, rng, *, delta=1e-7):
    """Each variable's meta-gradient, projected on a random direction, equals
    the central difference of the meta-loss (float64) along it.

    `grads` are `learner.compute_meta_gradients(batch, 0)[1]`, aligned with
    `learner.trainable_variables`; every variable is restored afterwards.
    """
    for variable, grad in zip(learner.trainable_variables, grads,
                              strict=True):
        start = variable.numpy()
        direction = rng.normal(size=start.shape)
        values = []
        for sign in (1.0, -1.0):
            variable.assign(start + sign * delta * direction)
            values.append(float(learner.compute_meta_gradients(batch, 0)[0]))
        variable.assign(start)
        np.testing.assert_allclose(
            (values[0] - values[1]) / (2 * delta),
            np.sum(grad.numpy() * direction), rtol=1e-5, atol=1e-7,
            err_msg=variable.path,
        )
