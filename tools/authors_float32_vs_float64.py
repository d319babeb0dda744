"""The authors' PyTorch meta-step in float32 and float64, against ours.

Reads a file written by `tools/precision_f32_vs_f64.py --dump=FILE` (our
initial weights, the batch, our float32 and float64 results), loads the
weights into the authors' MAML++ (a checkout of HowToTrainYourMAMLPytorch,
never part of this repository; built by tools/authors_code.py, the
mini-ImageNet 5-way 1-shot config), runs their meta-step forward and
backward (no update) in float32 and in float64, and prints the LSLR
meta-gradient of conv0's kernel per inner step: theirs and ours, and each
float32 result's relative error against float64.

  python tools/precision_f32_vs_f64.py --dump=/tmp/step.npz
  python tools/authors_float32_vs_float64.py --authors_dir=~/authors \
      --dump=/tmp/step.npz

Needs PyTorch (CPU) and numpy, not TensorFlow. A developer's diagnostic.
"""

import argparse
import pathlib

import numpy as np
import torch

import authors_code  # tools/authors_code.py, beside this file.

CONFIG = "mini-imagenet_maml++-mini-imagenet_1_2_0.01_48_5_0"
PREFIX = "classifier.layer_dict."
LSLR_PREFIX = "inner_loop_optimizer.names_learning_rates_dict.layer_dict-"


def theirs_from_ours(ours, num_filters):
    """Our tensors ("network/...", HWIO, NHWC flatten) in their layout."""
    out = {}
    for i in range(4):
        conv = f"{PREFIX}conv{i}."
        out[f"{conv}conv.weight"] = np.transpose(
            ours[f"network/conv{i}/kernel"], (3, 2, 0, 1))
        out[f"{conv}conv.bias"] = ours[f"network/conv{i}/bias"]
        out[f"{conv}norm_layer.weight"] = ours[f"network/norm{i}/gamma"]
        out[f"{conv}norm_layer.bias"] = ours[f"network/norm{i}/beta"]
        for mine, theirs in (("kernel", "weight"), ("bias", "bias")):
            out[f"{LSLR_PREFIX}conv{i}-conv-{theirs}"] = ours[
                f"inner_lr/conv{i}/{mine}"]
    kernel = ours["network/dense/kernel"]  # [H*W*C, ways], HWC order.
    side = int(round((kernel.shape[0] // num_filters) ** 0.5))
    kernel = kernel.reshape(side, side, num_filters, -1)
    kernel = kernel.transpose(2, 0, 1, 3).reshape(-1, kernel.shape[-1])
    out[f"{PREFIX}linear.weights"] = kernel.T  # CHW order, as theirs.
    out[f"{PREFIX}linear.bias"] = ours["network/dense/bias"]
    for mine, theirs in (("kernel", "weights"), ("bias", "bias")):
        out[f"{LSLR_PREFIX}linear-{theirs}"] = ours[f"inner_lr/dense/{mine}"]
    return out


def their_batch(dump, dtype, ways):
    def images(x):  # [t, n*k, H, W, C] -> [t, n, k, C, H, W]
        t, nk, h, w, c = x.shape
        x = x.reshape(t, ways, nk // ways, h, w, c).transpose(0, 1, 2, 5, 3, 4)
        return torch.tensor(np.ascontiguousarray(x), dtype=dtype)

    def labels(y):
        return torch.tensor(y.reshape(y.shape[0], ways, -1), dtype=torch.long)

    return (images(dump["batch/support_x"]), images(dump["batch/query_x"]),
            labels(dump["batch/support_y"]), labels(dump["batch/query_y"]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--authors_dir", required=True)
    parser.add_argument("--dump", required=True)
    args = parser.parse_args()
    authors_dir = pathlib.Path(args.authors_dir).expanduser().resolve()
    dump = dict(np.load(args.dump))
    init = {k[len("init/"):]: v for k, v in dump.items()
            if k.startswith("init/")}
    num_filters = init["network/conv0/kernel"].shape[-1]
    model, their_args = authors_code.build_model(
        authors_dir, authors_code.config_path(authors_dir, CONFIG))
    num_steps = their_args.number_of_training_steps_per_iter
    theirs = {}
    for dtype in (torch.float32, torch.float64):
        model.to(dtype)
        named = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in theirs_from_ours(init, num_filters).items():
                param = named[name]
                # Their LSLR tensors hold num_steps + 1 entries; the last is
                # never used.
                param[: value.shape[0]] = torch.tensor(value, dtype=dtype)
        model.zero_grad()
        model.train()
        losses, _ = model.train_forward_prop(
            data_batch=their_batch(dump, dtype, their_args.num_classes_per_set),
            epoch=0,
        )
        losses["loss"].backward()
        grad = named[f"{LSLR_PREFIX}conv0-conv-weight"].grad
        theirs[dtype] = grad.detach().double().numpy()[:num_steps]
    ours = {
        dtype: np.array([
            dump[f"{dtype}/meta/inner_lr/conv0/kernel/step {k}"]
            for k in range(num_steps)
        ]) for dtype in ("float32", "float64")
    }
    exact = ours["float64"]
    print("LSLR meta-gradient of conv0/kernel, per inner step")
    rows = (("ours float64", exact), ("theirs float64", theirs[torch.float64]),
            ("ours float32", ours["float32"]),
            ("theirs float32", theirs[torch.float32]))
    for label, values in rows:
        print(f"{label:15s} " + " ".join(f"{v:12.6g}" for v in values))
    for label, values in rows[1:]:
        error = np.abs(values - exact) / np.abs(exact)
        print(f"{label:15s} rel. error vs ours float64: "
              + " ".join(f"{e:9.2e}" for e in error))


if __name__ == "__main__":
    main()
