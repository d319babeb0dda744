"""Prints the docs/results.md tables from the run directories.

  python tools/results_tables.py --results=RESULTS_DIR \
      [--timings=BENCH_DIR]

RESULTS_DIR is what `tools/run_reproduction.sh RESULTS_DIR` fills: one
run directory per row. Every accuracy comes from a run's
test_summary.json (the top-k logit ensemble, and the single best epoch by
validation accuracy), every curve point from its metrics.csv. A row whose
run has not finished is printed as such, with its progress.

--timings: a folder of `mamlpp-benchmark --output_json` files named
`<row>.json` and `mamlpp_5w1s_full.epoch<E>.json`
(tools/run_ablation_timings.sh writes them), for the ablation's and the
full budget's seconds per meta-step. Training runs share the machine with
other work, so their own wall times are not used as speed figures.

Intervals: ours are 95% intervals over the 600 test tasks,
1.96 * std / sqrt(n) (how sure one run's accuracy is); the spread over
seeds is the sample standard deviation (n - 1) of the seeds' accuracies,
the form of the paper's +- (spread over runs).
"""

import csv
import itertools
import json
import pathlib
import statistics
import subprocess

from absl import app
from absl import flags

_RESULTS = flags.DEFINE_string(
    "results", None, "run_reproduction.sh's RESULTS_DIR.", required=True
)
_TIMINGS = flags.DEFINE_string(
    "timings", None, "Folder of <row>.json benchmark figures for the ablation."
)

_REPO = pathlib.Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2)
# (row, label) in the paper's order: MAML, then one part added per row.
ABLATION = (
    ("maml_5w1s_s0", "MAML"),
    ("ablation_bn", "+ BNWB + BNRS"),
    ("ablation_bn_lslr", "+ LSLR"),
    ("ablation_bn_lslr_msl", "+ MSL"),
    ("mamlpp_5w1s_s0", "+ CA (= MAML++, the flagfile)"),
    ("ablation_mamlpp_da", "MAML++ + DA (first order in epochs 0-1 of 4)"),
)
# Antoniou et al. (2019), Omniglot 5-way 1-shot test accuracy, full budget.
PAPER_MAMLPP_5W1S = 99.47


def _summary(workdir: pathlib.Path) -> dict | None:
    path = workdir / "test_summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _metrics(workdir: pathlib.Path) -> list[dict]:
    path = workdir / "metrics.csv"
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _pct(mean: float, ci95: float) -> str:
    return f"{100 * mean:.2f} ± {100 * ci95:.2f}%"


def _progress(workdir: pathlib.Path) -> str:
    if not workdir.exists():
        return "not started"
    return f"running: {len(_metrics(workdir))} epoch(s) done"


def _accuracy_cells(
    workdir: pathlib.Path, summary: dict | None
) -> tuple[str, str]:
    """The ensemble and single-best cells from the run's summary, or its
    progress while it has none."""
    if summary is None:
        return _progress(workdir), ""
    ensemble = _pct(
        summary["test_accuracy_mean"], summary["test_accuracy_ci95"]
    )
    best = _pct(
        summary["single_best_accuracy_mean"],
        summary["single_best_accuracy_ci95"],
    )
    single = f"{best} (epoch {summary['single_best_epoch'] + 1})"
    return ensemble, single


def _interval(summary: dict | None) -> tuple[float, float] | None:
    """(test accuracy, its 95% half-width), or None before the test."""
    if summary is None:
        return None
    return summary["test_accuracy_mean"], summary["test_accuracy_ci95"]


def _relation(a: tuple[float, float], b: tuple[float, float]) -> str:
    """How two (mean, 95% half-width) intervals lie: 'within' (each mean
    inside the other's interval), 'overlap' (they touch, one mean outside)
    or 'apart'."""
    gap = abs(a[0] - b[0])
    if gap <= min(a[1], b[1]):
        return "within"
    return "overlap" if gap <= a[1] + b[1] else "apart"


# (row, label, the paper's figure at the full budget and what it is).
SEED0 = (
    ("mamlpp_5w1s_s0", "MAML++ Omniglot 5w1s", "99.47%"),
    ("maml_5w1s_s0", "MAML Omniglot 5w1s", "98.7% (MAML, Finn et al.)"),
    ("mamlpp_20w1s_s0", "MAML++ Omniglot 20w1s", "97.65 ± 0.05% (over runs)"),
)


def seed0_table(results: pathlib.Path) -> str:
    lines = [
        "| run (4 x 500, seed 0) | test, top-5 ensemble | single best epoch "
        "| paper, full budget |",
        "|---|---|---|---|",
    ]
    for row, label, paper in SEED0:
        workdir = results / row
        ensemble, single = _accuracy_cells(workdir, _summary(workdir))
        lines.append(f"| {label} | {ensemble} | {single} | {paper} |")
    return "\n".join(lines)


def _timing(timings: pathlib.Path | None, name: str) -> float | None:
    path = timings / f"{name}.json" if timings else None
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text())["seconds_per_iteration"]


# The full-budget rows of run_reproduction.sh: (label, the paper's figure).
FULL_BUDGET = {
    "mamlpp_5w1s_full": (
        "MAML++ Omniglot 5w1s, seed 0",
        f"{PAPER_MAMLPP_5W1S}%",
    ),
    # Antoniou et al. (2019), Omniglot 20-way 1-shot, +- over runs.
    "mamlpp_20w1s_full": (
        "MAML++ Omniglot 20w1s, seed 0",
        "97.65 ± 0.05% (over runs)",
    ),
}


def full_budget_flags(row: str = "mamlpp_5w1s_full") -> dict[str, str]:
    """A full-budget row's flags: its flagfile and overrides, expanded."""
    args = subprocess.run(
        [
            "bash",
            str(_REPO / "tools" / "run_reproduction.sh"),
            "--args",
            row,
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=_REPO,
    ).stdout.split()
    # absl expands --flagfile= (relative to the repository root) in place.
    args = [a.replace("--flagfile=", f"--flagfile={_REPO}/", 1) for a in args]
    expanded = flags.FlagValues().read_flags_from_files(args, force_gnu=True)
    return dict(arg[2:].split("=", 1) for arg in expanded)


def full_budget_table(
    results: pathlib.Path,
    timings: pathlib.Path | None = None,
    row: str = "mamlpp_5w1s_full",
) -> str:
    """A full-budget row (a key of FULL_BUDGET): its test, pace and curve.

    The pace needs `<row>.epoch0.json` and `<row>.epoch<msl_epochs>.json` in
    `timings`; without them the table leaves it out.
    """
    if row not in FULL_BUDGET:
        raise ValueError(
            f"row must be one of {sorted(FULL_BUDGET)}, got {row!r}."
        )
    label, paper = FULL_BUDGET[row]
    full = full_budget_flags(row)
    epochs = int(full["total_epochs"])
    iterations = int(full["iterations_per_epoch"])
    msl_epochs = int(full["msl_epochs"])
    workdir = results / row
    ensemble, single = _accuracy_cells(workdir, _summary(workdir))
    rows = _metrics(workdir)
    best = max(rows, key=lambda r: float(r["val_accuracy"]), default=None)
    best_val = (
        f"{100 * float(best['val_accuracy']):.2f}% "
        f"(epoch {int(best['epoch']) + 1})"
        if best
        else ""
    )
    lines = [
        "| run | epochs | test, top-5 ensemble | single best epoch | best "
        "validation | paper |",
        "|---|---|---|---|---|---|",
        f"| {label} | {len(rows)} of {epochs} "
        f"| {ensemble} | {single} | {best_val} | {paper} |",
    ]
    msl = _timing(timings, f"{row}.epoch0")
    last = _timing(timings, f"{row}.epoch{msl_epochs}")
    if msl is not None and last is not None:
        steps = msl_epochs * msl + (epochs - msl_epochs) * last
        hours = iterations * steps / 3600
        lines += [
            "",
            f"Seconds per meta-step: {msl:.3f} s in epochs 1-{msl_epochs} "
            f"(multi-step loss), {last:.3f} s in epochs {msl_epochs + 1}-"
            f"{epochs}; the {epochs * iterations:,} meta-steps take "
            f"{hours:.1f} h of training at that pace (validation and test "
            "not counted).",
        ]
    # The validation curve, every tenth epoch (and the first).
    shown = [
        r
        for r in rows
        if int(r["epoch"]) == 0 or (int(r["epoch"]) + 1) % 10 == 0
    ]
    if shown:
        lines += [
            "",
            "| epoch | "
            + " | ".join(str(int(r["epoch"]) + 1) for r in shown)
            + " |",
            "|---|" + "---|" * len(shown),
            "| validation | "
            + " | ".join(
                f"{100 * float(r['val_accuracy']):.2f}%" for r in shown
            )
            + " |",
        ]
    return "\n".join(lines)


def seed_table(results: pathlib.Path) -> str:
    lines = [
        "| method | seed 0 | seed 1 | seed 2 | mean ± std over seeds |",
        "|---|---|---|---|---|",
    ]
    intervals, stds = {}, {}
    for method, prefix in (("MAML++", "mamlpp"), ("MAML", "maml")):
        workdirs = [results / f"{prefix}_5w1s_s{seed}" for seed in SEEDS]
        summaries = [_summary(workdir) for workdir in workdirs]
        cells = [
            _accuracy_cells(workdir, summary)[0]
            for workdir, summary in zip(workdirs, summaries)
        ]
        found = [_interval(summary) for summary in summaries]
        intervals[method] = [i for i in found if i is not None]
        accs = [100 * mean for mean, _ in intervals[method]]
        if len(accs) == len(SEEDS):
            stds[method] = statistics.stdev(accs)
            spread = f"{statistics.mean(accs):.2f} ± {stds[method]:.2f}%"
        else:
            spread = f"{len(accs)} of {len(SEEDS)} seeds done"
        lines.append(f"| {method} | {' | '.join(cells)} | {spread} |")
    if len(stds) == 2:  # Every seed of both methods has finished.
        pairs = list(zip(intervals["MAML++"], intervals["MAML"]))
        higher = [a[0] > b[0] for a, b in pairs]
        # A higher mean inside the other's interval is not a win on its
        # own, so the line also counts the seeds where the two 95%
        # intervals do not touch.
        apart = sum(
            h and _relation(a, b) == "apart" for h, (a, b) in zip(higher, pairs)
        )
        lines.append("")
        lines.append(
            f"MAML++'s mean is higher than MAML's on {sum(higher)} of "
            f"{len(SEEDS)} seeds, with its 95% interval wholly above MAML's "
            f"on {apart} of them; spread (std) {stds['MAML++']:.2f} "
            f"against {stds['MAML']:.2f} points."
        )
    return "\n".join(lines)


def _seconds_per_step(timings: pathlib.Path | None, row: str) -> str:
    if timings is None:
        return ""
    seconds = _timing(timings, row)
    return "not measured" if seconds is None else f"{seconds:.3f} s"


def ablation_table(results: pathlib.Path, timings: pathlib.Path | None) -> str:
    lines = [
        "| row | test, top-5 ensemble | single best epoch | s/meta-step "
        "(epoch 0) |",
        "|---|---|---|---|",
    ]
    intervals = []
    for row, label in ABLATION:
        summary = _summary(results / row)
        ensemble, single = _accuracy_cells(results / row, summary)
        intervals.append((label, _interval(summary)))
        lines.append(
            f"| {label} | {ensemble} | {single} | "
            f"{_seconds_per_step(timings, row)} |"
        )
    # Neighbouring rows (what one added part changed) whose 95% intervals
    # overlap are not ranked. Overlap is the looser test: it also holds
    # where one mean lies just outside the other's interval, so each pair
    # says which of the two cases it is.
    within, overlapping = [], []
    for (a, ia), (b, ib) in itertools.pairwise(intervals):
        if ia is None or ib is None:
            continue
        relation = _relation(ia, ib)
        if relation == "within":
            within.append(f"{a} / {b}")
        elif relation == "overlap":
            overlapping.append(f"{a} / {b}")
    for heading, pairs in (
        ("Within each other's intervals (not ranked)", within),
        ("Intervals overlap, one mean outside (not ranked)", overlapping),
    ):
        if pairs:
            lines.append("")
            lines.append(f"{heading}: " + "; ".join(pairs) + ".")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    results = pathlib.Path(_RESULTS.value)
    if not results.is_dir():
        raise app.UsageError(
            f"--results={results} is not a folder; pass "
            "the RESULTS_DIR of run_reproduction.sh."
        )
    timings = pathlib.Path(_TIMINGS.value) if _TIMINGS.value else None
    print("## CPU budget, seed 0\n")
    print(seed0_table(results))
    print("\n## Full budget\n")
    print(
        "\n\n".join(
            full_budget_table(results, timings, row) for row in FULL_BUDGET
        )
    )
    print("\n## Seeds\n")
    print(seed_table(results))
    print("\n## Ablation\n")
    print(ablation_table(results, timings))


if __name__ == "__main__":
    app.run(main)
