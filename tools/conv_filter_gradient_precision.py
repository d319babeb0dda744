"""float32 error of TensorFlow's conv filter gradient, oneDNN against Eigen.

Conv2DBackpropFilter of a mini-ImageNet conv0 (3x3, 3 -> 48 channels, SAME,
84x84 inputs, 5 support or 75 query images; the output gradient has zero
mean per channel, as after batch norm) in float32, against the same op in
float64. Each setting of TF_ENABLE_ONEDNN_OPTS runs in its own process (it
is read when TensorFlow loads). Prints |g32 - g64| / |g64| (Frobenius).

  python tools/conv_filter_gradient_precision.py

A developer's diagnostic: not installed with the package.
"""

import os
import subprocess
import sys


def measure():
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    for images in (5, 75):
        x = (rng.uniform(size=(images, 84, 84, 3)) - 0.45) / 0.225
        dy = rng.normal(size=(images, 84, 84, 48))
        dy -= dy.mean(axis=(0, 1, 2))

        def filter_gradient(dtype):
            return tf.raw_ops.Conv2DBackpropFilter(
                input=tf.constant(x, dtype), filter_sizes=[3, 3, 3, 48],
                out_backprop=tf.constant(dy, dtype), strides=[1, 1, 1, 1],
                padding="SAME",
            ).numpy().astype(np.float64)

        g64 = filter_gradient(tf.float64)
        g32 = filter_gradient(tf.float32)
        error = np.linalg.norm(g32 - g64) / np.linalg.norm(g64)
        terms = images * 84 * 84
        print(f"TF_ENABLE_ONEDNN_OPTS={os.environ['TF_ENABLE_ONEDNN_OPTS']}"
              f" {images:2d} images ({terms} terms per entry): "
              f"relative error {error:.2e} "
              f"({error / 2.0**-24:.0f} x float32 roundoff)")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--measure":
        measure()
        return
    for setting in ("1", "0"):
        env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=setting,
                   TF_CPP_MIN_LOG_LEVEL="3")
        subprocess.run([sys.executable, __file__, "--measure"], env=env,
                       check=True)


if __name__ == "__main__":
    main()
