"""tools/regenerate_golden.py without PyTorch: its episodes and comparison.

The meta-step itself runs the authors' code (a checkout and PyTorch, which
CI does not have); docs/fidelity.md gives the command and what it gave.
"""

import types

import numpy as np
import pytest

import regenerate_golden  # tools/, on sys.path from conftest.py


def _args(ways=5, shots=1, queries=2):
    return types.SimpleNamespace(
        num_classes_per_set=ways,
        num_samples_per_class=shots,
        num_target_samples=queries,
        image_channels=1,
        image_height=6,
        image_width=4,
    )


def test_drawn_episodes_have_the_golden_layout():
    episodes = regenerate_golden._drawn_episodes(_args(), 3, seed=1)
    assert episodes["xs"].shape == (3, 5, 1, 1, 6, 4)
    assert episodes["xt"].shape == (3, 5, 2, 1, 6, 4)
    assert episodes["xs"].dtype == np.float32
    assert set(np.unique(episodes["xt"])) <= {0.0, 1.0}
    # Class-major labels: sample j of class n is labelled n.
    assert episodes["yt"].dtype == np.int64
    np.testing.assert_array_equal(episodes["yt"][2, :, 1], np.arange(5))
    np.testing.assert_array_equal(episodes["ys"][0, 3], [3])
    again = regenerate_golden._drawn_episodes(_args(), 3, seed=1)
    other = regenerate_golden._drawn_episodes(_args(), 3, seed=2)
    np.testing.assert_array_equal(again["xt"], episodes["xt"])
    assert not np.array_equal(other["xt"], episodes["xt"])


def test_compare_gives_the_gradient_distance(tmp_path):
    other = {
        "loss": np.float64(2.0),
        "grad/a": np.array([3.0, 0.0], np.float32),
        "grad/b": np.array([4.0], np.float32),
    }
    new = {
        "loss": np.float64(2.5),
        "grad/a": np.array([3.0, 1.0], np.float32),
        "grad/b": np.array([4.0], np.float32),
    }
    np.savez(tmp_path / "other.npz", **other)
    result = regenerate_golden.compare(new, tmp_path / "other.npz")
    assert result["loss_abs_diff"] == 0.5
    # |(0, 1, 0)| / |(3, 0, 4)| = 1 / 5.
    assert result["gradients_relative_diff"] == pytest.approx(0.2)
    assert result["max_abs_diff"] == {"grad/a": 1.0, "grad/b": 0.0}


def test_compare_names_keys_that_only_one_file_has(tmp_path):
    np.savez(tmp_path / "other.npz", loss=np.float64(1.0), extra=np.zeros(1))
    result = regenerate_golden.compare(
        {"loss": np.float64(1.0)}, tmp_path / "other.npz"
    )
    assert result == {"keys_only_new": [], "keys_only_other": ["extra"]}
