"""Plots validation accuracy per epoch for several run directories.

  python tools/plot_learning_curves.py \
      --run=MAML++=runs/results/mamlpp_5w1s --run=MAML=runs/results/maml_5w1s \
      --output=docs/learning_curves.png

Reads each run's metrics.csv (one row per epoch) and, where present,
test_summary.json for the legend. Needs matplotlib (`pip install -e .[plots]`).
"""

import csv
import json
import pathlib

from absl import app
from absl import flags

_RUNS = flags.DEFINE_multi_string(
    "run", None, "LABEL=WORKDIR; repeat for each run to plot.", required=True
)
_OUTPUT = flags.DEFINE_string("output", None, "PNG file to write.",
                              required=True)
_TITLE = flags.DEFINE_string(
    "title", "Validation accuracy per epoch (real Omniglot, 600 tasks)",
    "Figure title.",
)


def _read_curve(workdir: pathlib.Path):
    path = workdir / "metrics.csv"
    if not path.is_file():
        raise app.UsageError(f"{path} does not exist: is {workdir} a run "
                             "directory of mamlpp-train?")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise app.UsageError(f"{path} has no epochs yet.")
    epochs = [int(r["epoch"]) + 1 for r in rows]  # 1-based for the axis.
    accuracy = [100.0 * float(r["val_accuracy"]) for r in rows]
    ci95 = [100.0 * float(r["val_accuracy_ci95"]) for r in rows]
    return epochs, accuracy, ci95


def _label(label: str, workdir: pathlib.Path) -> str:
    summary = workdir / "test_summary.json"
    if not summary.is_file():
        return label
    values = json.loads(summary.read_text())
    return (f"{label} (test {100 * values['test_accuracy_mean']:.2f} "
            f"± {100 * values['test_accuracy_ci95']:.2f}%)")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import matplotlib  # Optional dependency: only this script needs it.

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4.5), dpi=120)
    for spec in _RUNS.value:
        label, sep, workdir = spec.partition("=")
        if not sep:
            raise app.UsageError(f"--run={spec!r} must be LABEL=WORKDIR.")
        workdir = pathlib.Path(workdir)
        epochs, accuracy, ci95 = _read_curve(workdir)
        axes.errorbar(epochs, accuracy, yerr=ci95, marker="o", capsize=3,
                      label=_label(label, workdir))
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.set_xlabel("epoch (500 meta-iterations each)")
    axes.set_ylabel("validation accuracy (%)")
    axes.set_title(_TITLE.value)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    output = pathlib.Path(_OUTPUT.value)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(output)
    print(f"wrote {output}")


if __name__ == "__main__":
    app.run(main)
