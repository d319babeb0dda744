"""Prints docs/benchmarks.md's side-by-side tables from run_side_by_side.sh.

  python tools/side_by_side_table.py OUT_DIR

Reads OUT_DIR/<config>_<phase>_{ours,authors}.json and the memory-option
files <config>_train_msl_ours+tasks<N>[+malloc].json. Speed-up is the
authors' seconds per iteration over ours (the median of the timed steps of
each); memory is each process's peak resident set size, and in brackets
what it holds above the framework's own footprint once imported
(import_rss_bytes: TensorFlow or PyTorch, before anything is built), where
the files have it. Where the files record it (peak_anon_bytes, sampled by
mamlpp_tf/process_memory.py), a third table sets each peak beside its
private part: the resident set without the shared libraries' file pages.
"""

import json
import pathlib
import sys

CONFIGS = (
    ("omniglot_5way_1shot", "Omniglot 5w1s"),
    ("omniglot_5way_5shot", "Omniglot 5w5s"),
    ("omniglot_20way_1shot", "Omniglot 20w1s"),
    ("omniglot_20way_5shot", "Omniglot 20w5s"),
    ("mini_imagenet_5way_1shot", "mini-ImageNet 5w1s"),
    ("mini_imagenet_5way_5shot", "mini-ImageNet 5w5s"),
)
PHASES = (
    ("train_msl", "train, MSL on"),
    ("train_no_msl", "train, MSL off"),
    ("eval", "eval"),
)
TARGET_SPEEDUP = 3.0


def _load(folder: pathlib.Path, name: str) -> dict | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _gb(figures: dict) -> str:
    peak = figures["peak_rss_bytes"] / 1e9
    if "import_rss_bytes" not in figures:  # Measured before it was kept.
        return f"{peak:.2f} GB"
    above = peak - figures["import_rss_bytes"] / 1e9
    return f"{peak:.2f} GB ({above:.2f})"


def _pairs(folder: pathlib.Path):
    """(config, phase, both labels, ours, theirs) for every table row."""
    for exp, label in CONFIGS:
        for phase, phase_label in PHASES:
            yield (
                exp,
                phase,
                label,
                phase_label,
                _load(folder, f"{exp}_{phase}_ours"),
                _load(folder, f"{exp}_{phase}_authors"),
            )


def speed_table(folder: pathlib.Path) -> str:
    lines = [
        "| configuration | phase | ours (s/iter) | authors' (s/iter) "
        "| speed-up | ours, peak RSS (above import) | authors', peak RSS "
        "(above import) | 3x and no "
        "more memory |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for exp, phase, label, phase_label, ours, theirs in _pairs(folder):
        if (
            ours is None
            and theirs is None
            and not any(
                (folder / f"{exp}_{phase}_{who}.log").exists()
                for who in ("ours", "authors")
            )
        ):
            lines.append(f"| {label} | {phase_label} | not run yet | | | | | |")
            continue
        if ours is None or theirs is None:
            missing = "ours" if ours is None else "authors'"
            cells = [
                "" if f is None else f"{f['seconds_per_iteration']:.3f}"
                for f in (ours, theirs)
            ]
            lines.append(
                f"| {label} | {phase_label} | {cells[0]} | {cells[1]} "
                f"| not measured ({missing} run failed: see its log) "
                "| | | |"
            )
            continue
        mine = ours["seconds_per_iteration"]
        other = theirs["seconds_per_iteration"]
        speedup = other / mine
        met = (
            speedup >= TARGET_SPEEDUP
            and ours["peak_rss_bytes"] <= theirs["peak_rss_bytes"]
        )
        lines.append(
            f"| {label} | {phase_label} | {mine:.3f} | {other:.3f} "
            f"| {speedup:.2f}x | {_gb(ours)} | {_gb(theirs)} "
            f"| {'yes' if met else 'no'} |"
        )
    return "\n".join(lines)


def memory_table(folder: pathlib.Path) -> str:
    lines = [
        "| configuration (train, MSL on) | tasks in flight | allocator "
        "| s/iter | peak RSS | system CPU s/iter |",
        "|---|---|---|---|---|---|",
    ]
    for exp, label in CONFIGS:
        for tasks in (1, 2):
            for suffix, allocator in (("", "BFC"), ("+malloc", "malloc")):
                figures = _load(
                    folder, f"{exp}_train_msl_ours+tasks{tasks}{suffix}"
                )
                if figures is None:
                    continue
                lines.append(
                    f"| {label} | {tasks} | {allocator} "
                    f"| {figures['seconds_per_iteration']:.3f} "
                    f"| {_gb(figures)} "
                    f"| {figures['cpu_system_seconds_per_iteration']:.2f} |"
                )
    return "\n".join(lines)


def private_memory_table(folder: pathlib.Path) -> str | None:
    """Peak RSS and its private part (peak_anon_bytes), both sides.

    None where no file records the private peak (measured before it was).
    """
    lines = [
        "| configuration | phase | peak RSS, ours | peak RSS, authors' "
        "| private peak, ours | private peak, authors' "
        "| ours at or below theirs: RSS / private |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = 0
    for _, _, label, phase_label, ours, theirs in _pairs(folder):
        if any(
            f is None or f.get("peak_anon_bytes") is None
            for f in (ours, theirs)
        ):
            continue
        rows += 1
        verdicts = [
            "yes" if ours[key] <= theirs[key] else "no"
            for key in ("peak_rss_bytes", "peak_anon_bytes")
        ]
        lines.append(
            f"| {label} | {phase_label} "
            f"| {ours['peak_rss_bytes'] / 1e9:.2f} GB "
            f"| {theirs['peak_rss_bytes'] / 1e9:.2f} GB "
            f"| {ours['peak_anon_bytes'] / 1e9:.2f} GB "
            f"| {theirs['peak_anon_bytes'] / 1e9:.2f} GB "
            f"| {' / '.join(verdicts)} |"
        )
    return "\n".join(lines) if rows else None


def main(argv) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    folder = pathlib.Path(argv[1])
    files = sorted(folder.glob("*.json"))
    if not files:
        print(f"error: no benchmark JSON files in {folder}", file=sys.stderr)
        return 2
    devices = sorted({json.loads(p.read_text())["device"] for p in files})
    print("Machine: " + "; ".join(devices) + "\n")
    print(speed_table(folder))
    print()
    print(memory_table(folder))
    private = private_memory_table(folder)
    if private is not None:
        print()
        print(private)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
