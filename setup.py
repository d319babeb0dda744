"""Installs mamlpp_tf, its console scripts and the test extras."""

import setuptools

setuptools.setup(
    name="mamlpp_tf",
    version="0.2.0",  # Also mamlpp_tf.__version__ (tests/test_public_api.py).
    description="MAML++ (How to Train Your MAML) in TensorFlow 2 / Keras 3.",
    license="Apache-2.0",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # scripts/ holds the absl apps and nothing else; it is installed as the
    # package `mamlpp_tf_scripts` so that the console scripts below can
    # import it. The repository's own tooling is in tools/, not installed.
    packages=setuptools.find_packages(include=["mamlpp_tf", "mamlpp_tf.*"])
    + ["mamlpp_tf_scripts"],
    package_dir={"mamlpp_tf_scripts": "scripts"},
    # The sha256 sums of the Omniglot archives that downloads are checked
    # against.
    package_data={"mamlpp_tf.data": ["checksums.tsv"]},
    install_requires=[
        # Tested: TF 2.21.0 with Keras 3.15.1 (see BUILD.md).
        "tensorflow>=2.16,<2.22",
        "keras>=3.3,<3.16",
        "tensorflow-datasets>=4.9,<4.10",
        "numpy>=1.26,<3",
        "absl-py>=2.0",
        "pillow>=10",
        "psutil>=5.9",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "pytest-xdist>=3.5",
            # keras.callbacks.TensorBoard writes through it
            # (tests/test_keras_model.py); the apps do not need it.
            "tensorboard>=2.16,<2.22",
        ],
        # tools/plot_learning_curves.py only.
        "plots": ["matplotlib>=3.7"],
    },
    entry_points={
        "console_scripts": [
            "mamlpp-train=mamlpp_tf_scripts.train:run",
            "mamlpp-evaluate=mamlpp_tf_scripts.evaluate:run",
            "mamlpp-export=mamlpp_tf_scripts.export:run",
            "mamlpp-benchmark=mamlpp_tf_scripts.benchmark:run",
            "mamlpp-predict=mamlpp_tf_scripts.predict:run",
        ]
    },
)
