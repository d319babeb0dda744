"""Relative error of a float32 meta-step against the float64 step.

Builds one learner in float32 and one in float64 holding the same weights
(the float32 ones, widened), runs one meta-step (`compute_meta_gradients`,
epoch 0, second order, MSL) on the same random batch (fixed seed) and prints,
for every tensor, |g32 - g64| / |g64| (Frobenius norms): the meta-gradients,
each LSLR rate entry by entry (one entry per inner step), and the support
gradient of every adapted tensor at every inner step (first task).

Beside each error it prints the float64 sensitivity: the relative change of
the float64 result when every weight and input is multiplied by
(1 + u * +-1), u = 2**-24 (float32's unit roundoff), RMS over --num_draws
draws. An error many times its sensitivity points at an op that rounds
worse than float32 should; an error about as large as its sensitivity is
what any float32 code gets on that entry (the entry is ill-conditioned).
tests/test_float32_precision.py holds the unit suite to this bound on a
small shape.

Default shape: mini-ImageNet 5-way 1-shot as in
flags/maml++_mini_imagenet_5way_1shot.cfg (84x84x3, 48 filters, 15 queries,
meta-batch 2, 5 inner steps, LSLR from 0.01), pixels uniform in [0, 1] and
ImageNet-normalised.

  python tools/precision_f32_vs_f64.py [--image_size=84] [--num_filters=48]
      [--num_queries=15] [--meta_batch_size=2] [--seed=0] [--num_draws=2]
      [--dump=FILE.npz]

A developer's diagnostic: not installed with the package.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import mamlpp_tf  # noqa: E402
from mamlpp_tf import inner_loop  # noqa: E402

FLOAT32_ROUNDOFF = 2.0**-24
# The authors' mini-ImageNet pipeline: ImageNet channel statistics.
IMAGENET_MEAN = np.array((0.485, 0.456, 0.406))
IMAGENET_STD = np.array((0.229, 0.224, 0.225))


def make_config(args, dtype):
    return mamlpp_tf.mamlpp(
        num_ways=5,
        num_shots=1,
        num_queries=args.num_queries,
        meta_batch_size=args.meta_batch_size,
        image_shape=(args.image_size, args.image_size, 3),
        num_filters=args.num_filters,
        num_inner_steps=args.num_inner_steps,
        num_eval_inner_steps=args.num_inner_steps,
        first_order_to_second_order_epoch=-1,
        msl_epochs=15,
        inner_lr_init=0.01,
        dtype=dtype,
    )


def random_batch(config, seed):
    """Pixels uniform in [0, 1], ImageNet-normalised; class-major labels."""
    rng = np.random.default_rng(seed)
    h, w, c = config.image_shape
    tasks, ways = config.meta_batch_size, config.num_ways

    def images(per_class):
        x = rng.uniform(size=(tasks, ways * per_class, h, w, c))
        return (x - IMAGENET_MEAN) / IMAGENET_STD  # float64

    def labels(per_class):
        y = np.repeat(np.arange(ways, dtype=np.int32), per_class)
        return np.tile(y, (tasks, 1))

    return {
        "support_x": images(config.num_shots),
        "support_y": labels(config.num_shots),
        "query_x": images(config.num_queries),
        "query_y": labels(config.num_queries),
    }


def results(learner, batch):
    """Every compared tensor (float64 numpy) by "<kind>/<name>[/step k]"."""
    dtype = learner.config.dtype
    batch = {
        k: v.astype(dtype) if k.endswith("_x") else v for k, v in batch.items()
    }
    out = {}
    _, grads = learner.compute_meta_gradients(batch, epoch=0)
    for name, grad in zip(
        learner.trainable_variable_names, grads, strict=True
    ):
        grad = grad.numpy().astype(np.float64)
        if name.startswith("inner_lr/"):
            for step, entry in enumerate(grad):
                out[f"meta/{name}/step {step}"] = entry
        else:
            out[f"meta/{name}"] = grad
    params = {
        n: tf.convert_to_tensor(v)
        for n, v in learner.model.named_variables().items()
    }

    def forward(x, step, fast, training):
        return learner.model.forward(
            x, step=step, params=fast, training=training
        )

    def rate(name, step):
        return learner.inner_rates.rate(name, step)

    support_x = tf.constant(batch["support_x"][0])
    support_y = tf.constant(batch["support_y"][0])
    fast = params
    for step, updated, _ in inner_loop.adapt_steps(
        forward, rate, params, support_x, support_y,
        num_steps=learner.config.num_inner_steps,
        adapted_names=learner.adapted_names, second_order=False,
        training=True,
    ):
        watched = [fast[n] for n in learner.adapted_names]
        with tf.GradientTape() as tape:
            tape.watch(watched)
            logits, _ = forward(support_x, step, fast, True)
            loss = inner_loop.cross_entropy(logits, support_y)
        for name, grad in zip(
            learner.adapted_names, tape.gradient(loss, watched), strict=True
        ):
            out[f"inner/{name}/step {step}"] = grad.numpy().astype(np.float64)
        fast = updated
    return out


def perturbed_results(learner, batch, rng):
    """`results` with every weight and input times (1 + u * +-1)."""
    saved = [tf.identity(v) for v in learner.trainable_variables]

    def jitter(x):
        signs = rng.choice([-1.0, 1.0], size=np.shape(x))
        return x * (1.0 + FLOAT32_ROUNDOFF * signs)

    for v in learner.trainable_variables:
        v.assign(jitter(v.numpy()))
    try:
        return results(learner, {
            k: jitter(v) if k.endswith("_x") else v for k, v in batch.items()
        })
    finally:
        for v, value in zip(learner.trainable_variables, saved, strict=True):
            v.assign(value)


def relative(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image_size", type=int, default=84)
    parser.add_argument("--num_filters", type=int, default=48)
    parser.add_argument("--num_queries", type=int, default=15)
    parser.add_argument("--meta_batch_size", type=int, default=2)
    parser.add_argument("--num_inner_steps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_draws", type=int, default=2,
                        help="float64 perturbation draws (0: none).")
    parser.add_argument("--dump", default=None,
                        help="Also save the weights, batch and results "
                        "(.npz) for comparison with other code.")
    args = parser.parse_args()

    keras.utils.set_random_seed(args.seed)
    learner32 = mamlpp_tf.MetaLearner(make_config(args, "float32"))
    learner64 = mamlpp_tf.MetaLearner(make_config(args, "float64"))
    for v32, v64 in zip(learner32.trainable_variables,
                        learner64.trainable_variables, strict=True):
        v64.assign(tf.cast(tf.convert_to_tensor(v32), tf.float64))
    batch = random_batch(learner32.config, args.seed)
    out = {}
    for dtype, learner in (("float32", learner32), ("float64", learner64)):
        start = time.perf_counter()
        out[dtype] = results(learner, batch)
        print(f"{dtype}: {time.perf_counter() - start:.1f} s")
    rng = np.random.default_rng(args.seed + 1)
    draws = [perturbed_results(learner64, batch, rng)
             for _ in range(args.num_draws)]
    if args.dump:
        arrays = {f"batch/{k}": v for k, v in batch.items()}
        for name, v in zip(learner32.trainable_variable_names,
                           learner32.trainable_variables, strict=True):
            arrays[f"init/{name}"] = np.asarray(v)
        for dtype, values in out.items():
            arrays.update({f"{dtype}/{k}": v for k, v in values.items()})
        np.savez(args.dump, **arrays)
    print(f"{'tensor':40s} {'float32':>14s} {'float64':>14s} "
          f"{'rel. error':>10s} {'sensitivity':>11s}")
    for key, exact in out["float64"].items():
        ours = out["float32"][key]
        sensitivity = float("nan")
        if draws:
            sensitivity = float(np.sqrt(np.mean(
                [relative(d[key], exact) ** 2 for d in draws])))
        values = ""
        if np.ndim(exact) == 0:
            values = f"{float(ours):14.7g} {float(exact):14.7g}"
        print(f"{key:40s} {values:>29s} {relative(ours, exact):10.2e} "
              f"{sensitivity:11.2e}")


if __name__ == "__main__":
    main()
