"""Regenerates the golden meta-step from the authors' PyTorch MAML++.

`tests/test_golden.py` holds our meta-step to one meta-step of the authors'
code: their initial weights, two episodes, their meta-loss and every
meta-gradient, in one .npz. This script computes that file again from a
checkout of AntreasAntoniou/HowToTrainYourMAMLPytorch that you fetched
(it is never part of this repository):

  python tools/regenerate_golden.py --authors_dir=AUTHORS_DIR \
      --output_npz=golden.npz [--episodes_from=GOLDEN.npz | --episode_seed=S] \
      [--compare_with=GOLDEN.npz]

Run it with a Python that has PyTorch (CPU), numpy and absl-py; it does
not need TensorFlow. Their model is built as their train script builds it
from `--config` (default: Omniglot MAML++ 5-way 1-shot), with their
default `--seed=104` seeding the initial weights. One meta-step is their
`train_forward_prop` at epoch 0 (second order, multi-step loss, 5 inner
steps) on a meta-batch of two tasks, then `backward()` of its loss: the
step their `run_train_iter` takes, without Adam applying it.

The episodes come from `--episodes_from` (the `xs`, `xt`, `ys`, `yt` of an
earlier golden file, so that the result compares value for value with it)
or, without it, are drawn with `--episode_seed`: black-or-white images
(pixels 0.0 or 1.0, as their Omniglot loader gives) and the labels
0..N-1 class by class, as their data provider lays them out.

The layout (what `../shared/golden/README.md` describes): xs, xt
[tasks, ways, shots or queries, C, H, W] float32; ys, yt [tasks, ways,
shots or queries] int64; loss (float64); msl [steps] float32, the
multi-step-loss weights; init/<name> and grad/<name> for every parameter
of their model (`named_parameters()`), a parameter without a gradient
(the BN running statistics) given zeros.

`--compare_with` prints how far the new file is from another one (the
shipped golden): the loss difference, and for each array the largest
absolute difference and, over all gradients together, the norm of the
difference over the norm of the other file's.
"""

import json
import pathlib

from absl import app
from absl import flags
import numpy as np

import authors_code  # tools/authors_code.py, beside this file.

_AUTHORS_DIR = flags.DEFINE_string(
    "authors_dir",
    None,
    "A checkout of HowToTrainYourMAMLPytorch.",
    required=True,
)
_CONFIG = flags.DEFINE_string(
    "config",
    "omniglot_maml++-omniglot_1_8_0.1_64_5_0",
    "One of their experiment_config/*.json, without .json.",
)
_OUTPUT = flags.DEFINE_string(
    "output_npz", None, "The .npz to write (a new file).", required=True
)
_EPISODES_FROM = flags.DEFINE_string(
    "episodes_from",
    None,
    "An .npz holding xs, xt, ys, yt (e.g. the shipped golden); unset: "
    "draw them with --episode_seed.",
)
_EPISODE_SEED = flags.DEFINE_integer(
    "episode_seed", 0, "Seed of the drawn episodes (without --episodes_from)."
)
_NUM_TASKS = flags.DEFINE_integer(
    "num_tasks", 2, "Tasks in the meta-batch (drawn episodes).", lower_bound=1
)
_COMPARE_WITH = flags.DEFINE_string(
    "compare_with", None, "An .npz to compare the new one with."
)

EPISODE_KEYS = ("xs", "xt", "ys", "yt")
# Black-or-white pixels, as their Omniglot loader gives after Pillow's
# resize of the 1-bit drawings. The share of ones: the mean pixel of the
# shipped golden's support images (0.299).
DRAWN_ONES = 0.3


def _drawn_episodes(args, num_tasks: int, seed: int) -> dict:
    """Random episodes in their layout: x [T, N, K, C, H, W], y [T, N, K]."""
    rng = np.random.default_rng(seed)
    n = args.num_classes_per_set
    shape = (args.image_channels, args.image_height, args.image_width)

    def images(per_class):
        x = rng.random((num_tasks, n, per_class, *shape)) < DRAWN_ONES
        return x.astype(np.float32)

    def labels(per_class):
        return np.tile(np.arange(n)[None, :, None], (num_tasks, 1, per_class))

    k, q = args.num_samples_per_class, args.num_target_samples
    return {
        "xs": images(k),
        "xt": images(q),
        "ys": labels(k).astype(np.int64),
        "yt": labels(q).astype(np.int64),
    }


def _read_episodes(path: pathlib.Path, args) -> dict:
    with np.load(path) as stored:
        missing = [k for k in EPISODE_KEYS if k not in stored.files]
        if missing:
            raise app.UsageError(
                f"--episodes_from={path} has no {missing}; give an .npz "
                "with xs, xt, ys, yt (e.g. a golden file)."
            )
        episodes = {k: stored[k] for k in EPISODE_KEYS}
    ways = episodes["xs"].shape[1]
    if ways != args.num_classes_per_set:
        raise app.UsageError(
            f"--episodes_from={path} holds {ways}-way tasks but --config="
            f"{_CONFIG.value} is {args.num_classes_per_set}-way; pick the "
            "config of those episodes."
        )
    return episodes


def meta_step(model, args, episodes: dict) -> dict:
    """Their loss and meta-gradients of one meta-step at epoch 0."""
    import torch

    init = {
        name: p.detach().numpy().copy()
        for name, p in model.named_parameters()
    }
    model.train()
    model.current_epoch = 0
    msl = model.get_per_step_loss_importance_vector().numpy()
    batch = (
        torch.Tensor(episodes["xs"]).float(),
        torch.Tensor(episodes["xt"]).float(),
        torch.Tensor(episodes["ys"]).long(),
        torch.Tensor(episodes["yt"]).long(),
    )
    model.zero_grad()
    losses, _ = model.train_forward_prop(data_batch=batch, epoch=0)
    losses["loss"].backward()
    out = {k: np.asarray(v) for k, v in episodes.items()}
    out["loss"] = np.float64(losses["loss"].item())
    out["msl"] = msl.astype(np.float32)
    for name, p in model.named_parameters():
        out[f"init/{name}"] = init[name]
        grad = p.grad
        out[f"grad/{name}"] = (
            np.zeros_like(init[name])
            if grad is None
            else grad.detach().numpy().copy()
        )
    return out


def compare(new: dict, other_path: pathlib.Path) -> dict:
    """How far `new` is from the .npz at `other_path`."""
    with np.load(other_path) as stored:
        other = {k: stored[k] for k in stored.files}
    if sorted(other) != sorted(new):
        only_new = sorted(set(new) - set(other))
        only_other = sorted(set(other) - set(new))
        return {"keys_only_new": only_new, "keys_only_other": only_other}
    grads = sorted(k for k in new if k.startswith("grad/"))
    diff = np.sqrt(sum(np.sum((new[k] - other[k]) ** 2) for k in grads))
    norm = np.sqrt(sum(np.sum(other[k].astype(np.float64) ** 2) for k in grads))
    return {
        "loss_new": float(new["loss"]),
        "loss_other": float(other["loss"]),
        "loss_abs_diff": float(abs(new["loss"] - other["loss"])),
        "gradients_relative_diff": float(diff / norm),
        "max_abs_diff": {
            k: float(np.max(np.abs(new[k] - other[k]), initial=0.0))
            for k in sorted(new)
            if k != "loss"
        },
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    output = pathlib.Path(_OUTPUT.value)
    if output.exists():
        raise app.UsageError(
            f"--output_npz={output} exists; give a new file (nothing was "
            "overwritten)."
        )
    authors_dir = pathlib.Path(_AUTHORS_DIR.value).expanduser().resolve()
    config_path = authors_code.config_path(authors_dir, _CONFIG.value)
    model, args = authors_code.build_model(authors_dir, config_path)
    if _EPISODES_FROM.value:
        episodes = _read_episodes(pathlib.Path(_EPISODES_FROM.value), args)
    else:
        episodes = _drawn_episodes(
            args, _NUM_TASKS.value, _EPISODE_SEED.value
        )
    result = meta_step(model, args, episodes)
    output.parent.mkdir(parents=True, exist_ok=True)
    np.savez(output, **result)
    print(f"Wrote {output}: loss {result['loss']:.7f}, msl {result['msl']}.")
    if _COMPARE_WITH.value:
        print(
            json.dumps(
                compare(result, pathlib.Path(_COMPARE_WITH.value)), indent=2
            )
        )


if __name__ == "__main__":
    app.run(main)
