"""Prints the Markdown table of tools/run_query_backward_memory.sh's JSONs.

  python tools/query_backward_memory_table.py results/query_backward_memory
"""

import json
import pathlib
import sys

ROWS = (
    ("conv4_q15", "4-conv, 48 filters, 15 queries per class (the flagfile)"),
    ("resnet12_q3", "ResNet-12 64-160-320-640, 3 queries per class"),
    ("resnet12_q15", "ResNet-12 64-160-320-640, 15 queries per class "
                     "(the flagfile)"),
)
# Measured with the default only; printed where present.
EXTRA_ROWS = (
    ("resnet12_q15_first_order", ROWS[2][1] + ", first order"),
    ("resnet12_5shot_q15_separate_true",
     "ResNet-12 64-160-320-640, 5-shot, 15 queries per class (the 5-shot "
     "flagfile)"),
    ("resnet12_5shot_q15_first_order",
     "ResNet-12 64-160-320-640, 5-shot, 15 queries per class, first order"),
)
MODES = (("separate_true", "own tape (default)"),
         ("separate_false", "outer tape (`--separate_query_backward=false`)"))


def _cells(figures):
    if figures is None:
        return "not measured", "-"
    if figures.get("memory_limit_exceeded"):
        limit = figures["memory_limit_bytes"] / 1e9
        return f"over {limit:.0f} GB (stopped there)", "-"
    return (f"{figures['peak_rss_bytes'] / 1e9:.2f} GB",
            f"{figures['seconds_per_iteration']:.1f}")


def table(folder) -> str:
    """The table, the resident floor and the device, from `folder`'s JSONs.

    Raises FileNotFoundError when `folder` holds no JSON file.
    """
    folder = pathlib.Path(folder)
    results = {p.stem: json.loads(p.read_text())
               for p in sorted(folder.glob("*.json"))}
    if not results:
        raise FileNotFoundError(f"no benchmark JSON files in {folder}")
    lines = ["| network | query losses differentiated on | peak RSS "
             "| s / meta-step |", "|---|---|---|---|"]
    for row, label in ROWS:
        for mode, mode_label in MODES:
            memory, seconds = _cells(results.get(f"{row}_{mode}"))
            lines.append(f"| {label} | {mode_label} | {memory} | {seconds} |")
    for name, label in EXTRA_ROWS:
        if name in results:
            memory, seconds = _cells(results[name])
            lines.append(f"| {label} | own tape (default) | {memory} "
                         f"| {seconds} |")
    floors = sorted({round(f["setup_rss_bytes"] / 1e9, 2)
                     for f in results.values() if "setup_rss_bytes" in f})
    devices = sorted({f["device"] for f in results.values() if "device" in f})
    lines += [
        "",
        "Resident before the first step (TensorFlow, the model, the batch): "
        f"{', '.join(f'{s:.2f} GB' for s in floors)}.",
        f"Device: {', '.join(devices)}.",
    ]
    return "\n".join(lines)


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        print(table(argv[1]))
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
