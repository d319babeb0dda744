"""Prints the Markdown table of the JSON files run_benchmarks.sh wrote.

  python tools/benchmark_table.py runs/benchmarks
"""

import json
import pathlib
import sys

COLUMNS = (
    ("train_msl", "train, 2nd order, MSL (s/iter)"),
    ("train_no_msl", "train, 2nd order, no MSL (s/iter)"),
    ("train_first_order", "train, 1st order (s/iter)"),
    ("eval", "eval (s/iter)"),
)


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    folder = pathlib.Path(argv[1])
    results = {p.stem: json.loads(p.read_text())
               for p in sorted(folder.glob("*.json"))}
    if not results:
        print(f"error: no benchmark JSON files in {folder}", file=sys.stderr)
        return 2
    experiments = []
    for name in results:
        for suffix, _ in COLUMNS:
            if name.endswith("_" + suffix):
                experiment = name[: -len(suffix) - 1]
                if experiment not in experiments:
                    experiments.append(experiment)
    header = ["configuration", *[title for _, title in COLUMNS],
              "trace + compile (s), train MSL",
              "peak RSS (GB), train MSL (before the first step)"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for experiment in experiments:
        cells = [experiment]
        for suffix, _ in COLUMNS:
            entry = results.get(f"{experiment}_{suffix}")
            cells.append("—" if entry is None
                         else f"{entry['seconds_per_iteration']:.3f}")
        main_entry = results.get(f"{experiment}_train_msl")
        cells.append("—" if main_entry is None
                     else f"{main_entry['trace_seconds']:.1f}")
        if main_entry is None:
            cells.append("—")
        else:
            setup = main_entry.get("setup_rss_bytes")
            cells.append(f"{main_entry['peak_rss_bytes'] / 1e9:.2f}"
                         + ("" if setup is None else f" ({setup / 1e9:.2f})"))
        print("| " + " | ".join(cells) + " |")
    device = next(iter(results.values()))["device"]
    print(f"\nDevice: {device}; TensorFlow "
          f"{next(iter(results.values()))['tensorflow_version']}.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
