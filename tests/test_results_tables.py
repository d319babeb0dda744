"""The docs/results.md tooling: row flags, the ablation timings, the tables.

The tables are checked on made-up run directories against figures worked
out by hand, so a wrong spread or a wrong overlap rule fails.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

import results_tables  # tools/, on sys.path from conftest.py

REPO = pathlib.Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"


def _finished(workdir: pathlib.Path, mean: float, ci95: float) -> None:
    workdir.mkdir(parents=True)
    (workdir / "test_summary.json").write_text(
        json.dumps(
            {
                "test_accuracy_mean": mean,
                "test_accuracy_ci95": ci95,
                "single_best_accuracy_mean": mean,
                "single_best_accuracy_ci95": ci95,
                "single_best_epoch": 3,
            }
        )
    )


def test_row_flags_are_the_flagfile_and_its_overrides():
    out = subprocess.run(
        [
            "bash",
            str(TOOLS / "run_reproduction.sh"),
            "--args",
            "ablation_bn_lslr",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == [
        "--flagfile=flags/maml_omniglot_5way_1shot.cfg",
        "--total_epochs=4",
        "--iterations_per_epoch=500",
        "--seed=0",
        "--per_step_bn_statistics=true",
        "--per_step_bn_weights=true",
        "--learn_inner_lr=true",
    ]


def test_an_unknown_row_is_refused_with_exit_2():
    result = subprocess.run(
        ["bash", str(TOOLS / "run_reproduction.sh"), "--args", "nope"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "--list shows the rows" in result.stderr


def _fake_benchmark(tmp_path, seconds):
    """A stand-in mamlpp-benchmark that writes its arguments as its JSON
    figures; `seconds` is a Python expression for seconds_per_iteration,
    in which `calls` counts the earlier calls."""
    fake = tmp_path / "fake_benchmark.py"
    counter = tmp_path / "calls"
    fake.write_text(
        "import json, pathlib, sys\n"
        f"counter = pathlib.Path({str(counter)!r})\n"
        "calls = int(counter.read_text()) if counter.exists() else 0\n"
        "counter.write_text(str(calls + 1))\n"
        "args = sys.argv[1:]\n"
        "out = [a for a in args if a.startswith('--output_json=')][0]\n"
        f"seconds = {seconds}\n"
        "json.dump({'seconds_per_iteration': seconds, 'args': args},\n"
        "          open(out.split('=', 1)[1], 'w'))\n"
    )
    return fake


def test_ablation_timings_benchmark_each_row_with_its_own_flags(tmp_path):
    # A stand-in benchmark that records its arguments as the JSON figures;
    # its time is 3.0, 1.0, 2.0 s in rounds 1, 2, 3 (8 measurements per
    # round: the 6 ablation rows, the full budget at epochs 0 and 10).
    fake = _fake_benchmark(tmp_path, "[3.0, 1.0, 2.0][calls // 8]")
    out = tmp_path / "timings"
    out.mkdir()
    (out / "ablation_bn.round4.json").write_text("{}")  # An earlier call's.
    subprocess.run(
        ["bash", str(TOOLS / "run_ablation_timings.sh"), str(out), "4", "3"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MAMLPP_BENCHMARK": f"{sys.executable} {fake}"},
    )
    rows = sorted(p.name for p in out.glob("*.json") if ".round" not in p.name)
    assert rows == sorted(
        [f"{row}.json" for row, _ in results_tables.ABLATION]
        + ["mamlpp_5w1s_full.epoch0.json", "mamlpp_5w1s_full.epoch10.json"]
    )
    assert not (out / "ablation_bn.round4.json").exists()
    bn = json.loads((out / "ablation_bn.json").read_text())
    assert bn["seconds_per_iteration"] == 2.0  # The median round.
    assert bn["rounds_seconds_per_iteration"] == [1.0, 2.0, 3.0]
    assert "--per_step_bn_weights=true" in bn["args"]
    assert "--learn_inner_lr=true" not in bn["args"]
    da = json.loads((out / "ablation_mamlpp_da.json").read_text())["args"]
    assert "--flagfile=flags/maml++_omniglot_5way_1shot.cfg" in da
    assert "--first_order_to_second_order_epoch=1" in da
    assert {"--phase=train", "--epoch=0", "--steps=4"} <= set(da)
    assert results_tables._seconds_per_step(out, "ablation_bn") == "2.000 s"
    full = json.loads((out / "mamlpp_5w1s_full.epoch10.json").read_text())
    assert full["seconds_per_iteration"] == 2.0
    assert "--epoch=10" in full["args"]
    assert "--total_epochs=4" not in full["args"]  # The flagfile as it is.


def test_ablation_timings_measure_only_the_names_given(tmp_path):
    fake = _fake_benchmark(tmp_path, "0.5")
    out = tmp_path / "timings"
    out.mkdir()
    (out / "ablation_bn.json").write_text('{"seconds_per_iteration": 9.0}')
    env = {**os.environ, "MAMLPP_BENCHMARK": f"{sys.executable} {fake}"}
    script = str(TOOLS / "run_ablation_timings.sh")
    subprocess.run(
        ["bash", script, str(out), "3", "1", "mamlpp_5w1s_full.epoch10"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    rows = sorted(p.name for p in out.glob("*.json") if ".round" not in p.name)
    assert rows == ["ablation_bn.json", "mamlpp_5w1s_full.epoch10.json"]
    # Another measurement's figures are kept, not re-measured or deleted.
    assert results_tables._seconds_per_step(out, "ablation_bn") == "9.000 s"
    full = json.loads((out / "mamlpp_5w1s_full.epoch10.json").read_text())
    assert {"--epoch=10", "--steps=3"} <= set(full["args"])

    unknown = subprocess.run(
        ["bash", script, str(out), "3", "1", "mamlpp_5w1s_full.epoch7"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert unknown.returncode == 2
    assert "no measurement named 'mamlpp_5w1s_full.epoch7'" in unknown.stderr
    assert "mamlpp_5w1s_full.epoch0 mamlpp_5w1s_full.epoch10" in unknown.stderr


def test_seed_table_spread_is_the_sample_std_over_seeds(tmp_path):
    for seed, (plus, plain) in enumerate(
        [(0.958, 0.940), (0.964, 0.965), (0.952, 0.930)]
    ):
        _finished(tmp_path / f"mamlpp_5w1s_s{seed}", plus, 0.008)
        _finished(tmp_path / f"maml_5w1s_s{seed}", plain, 0.009)
    table = results_tables.seed_table(tmp_path)
    # MAML++: mean 95.80, deviations 0, +0.6, -0.6 -> std sqrt(0.72/2) = 0.6.
    assert "| 95.80 ± 0.60% |" in table
    # MAML: mean 94.50, deviations -0.5, +2, -1.5 -> sqrt(6.5/2) = 1.803.
    assert "| 94.50 ± 1.80% |" in table
    # Seed 0: 95.8 - 94.0 = 1.8 > 0.8 + 0.9, apart. Seed 1: 96.4 < 96.5.
    # Seed 2: 95.2 - 93.0 = 2.2 > 1.7, apart.
    assert "higher than MAML's on 2 of 3 seeds" in table
    assert "wholly above MAML's on 2 of them" in table


def test_seed_table_a_higher_mean_inside_the_interval_is_not_apart(tmp_path):
    # Every MAML++ mean is higher, but only seed 0 clears the intervals:
    # 97.0 - 94.0 = 3.0 > 1.7; 95.0 - 94.0 = 1.0 and 94.5 - 94.0 = 0.5
    # are inside 0.8 + 0.9.
    for seed, plus in enumerate([0.970, 0.950, 0.945]):
        _finished(tmp_path / f"mamlpp_5w1s_s{seed}", plus, 0.008)
        _finished(tmp_path / f"maml_5w1s_s{seed}", 0.940, 0.009)
    table = results_tables.seed_table(tmp_path)
    assert "higher than MAML's on 3 of 3 seeds" in table
    assert "wholly above MAML's on 1 of them" in table
    # MAML: all three 94.0, so no spread; MAML++: mean 95.50, deviations
    # +1.5, -0.5, -1.0 -> sqrt(3.5 / 2) = 1.323.
    assert "spread (std) 1.32 against 0.00 points" in table


def test_ablation_names_neighbours_within_each_others_intervals(tmp_path):
    figures = {
        "maml_5w1s_s0": (0.900, 0.010),  # [0.890, 0.910]
        "ablation_bn": (0.905, 0.010),  # [0.895, 0.915]: overlaps MAML
        "ablation_bn_lslr": (0.950, 0.010),  # [0.940, 0.960]: apart
        "ablation_bn_lslr_msl": (0.955, 0.010),  # overlaps + LSLR
        "mamlpp_5w1s_s0": (0.958, 0.008),  # overlaps + MSL
        "ablation_mamlpp_da": (0.970, 0.002),  # [0.968, 0.972]: apart
    }
    for row, (mean, ci) in figures.items():
        _finished(tmp_path / row, mean, ci)
    table = results_tables.ablation_table(tmp_path, None)
    assert table.splitlines()[-1] == (
        "Within each other's intervals (not ranked): MAML / + BNWB + BNRS; "
        "+ LSLR / + MSL; + MSL / + CA (= MAML++, the flagfile)."
    )
    assert "| + LSLR | 95.00 ± 1.00% |" in table


def test_ablation_tells_overlapping_intervals_from_means_within(tmp_path):
    figures = {
        "maml_5w1s_s0": (0.900, 0.010),  # [0.890, 0.910]
        # [0.905, 0.925]: overlaps MAML's, but 0.915 is outside it.
        "ablation_bn": (0.915, 0.010),
        "ablation_bn_lslr": (0.920, 0.010),  # 0.920 and 0.915: within
        "ablation_bn_lslr_msl": (0.960, 0.005),  # apart
        "mamlpp_5w1s_s0": (0.962, 0.001),  # [0.961, 0.963]: 0.960 outside
        "ablation_mamlpp_da": (0.990, 0.001),  # apart
    }
    for row, (mean, ci) in figures.items():
        _finished(tmp_path / row, mean, ci)
    lines = results_tables.ablation_table(tmp_path, None).splitlines()
    assert lines[-3:] == [
        "Within each other's intervals (not ranked): + BNWB + BNRS / + LSLR.",
        "",
        "Intervals overlap, one mean outside (not ranked): "
        "MAML / + BNWB + BNRS; + MSL / + CA (= MAML++, the flagfile).",
    ]


def test_full_budget_table_gives_the_pace_and_every_tenth_epoch(tmp_path):
    workdir = tmp_path / "mamlpp_5w1s_full"
    workdir.mkdir()
    lines = ["epoch,val_accuracy"] + [
        f"{epoch},{0.90 + epoch / 1000}" for epoch in range(21)
    ]
    (workdir / "metrics.csv").write_text("\n".join(lines) + "\n")
    timings = tmp_path / "timings"
    timings.mkdir()
    for name, seconds in (("epoch0", 1.2), ("epoch10", 0.8)):
        (timings / f"mamlpp_5w1s_full.{name}.json").write_text(
            json.dumps({"seconds_per_iteration": seconds})
        )
    table = results_tables.full_budget_table(tmp_path, timings).splitlines()
    assert table[2].startswith("| MAML++ Omniglot 5w1s, seed 0 | 21 of 100 |")
    assert "| 92.00% (epoch 21) |" in table[2]  # Best validation: the last.
    # 500 * (10 * 1.2 + 90 * 0.8) s = 42,000 s = 11.67 h.
    assert table[4] == (
        "Seconds per meta-step: 1.200 s in epochs 1-10 (multi-step loss), "
        "0.800 s in epochs 11-100; the 50,000 meta-steps take 11.7 h of "
        "training at that pace (validation and test not counted)."
    )
    assert table[6] == "| epoch | 1 | 10 | 20 |"
    assert table[8] == "| validation | 90.00% | 90.90% | 91.90% |"


def test_full_budget_table_takes_the_20_way_row(tmp_path):
    table = results_tables.full_budget_table(
        tmp_path, row="mamlpp_20w1s_full"
    ).splitlines()
    # The paper flagfile as it is: 100 epochs; no run yet.
    assert table[2] == (
        "| MAML++ Omniglot 20w1s, seed 0 | 0 of 100 | not started |  |  "
        "| 97.65 ± 0.05% (over runs) |"
    )
    assert len(table) == 3


def test_full_budget_table_refuses_an_unknown_row(tmp_path):
    with pytest.raises(ValueError, match="row must be one of"):
        results_tables.full_budget_table(tmp_path, row="mamlpp_5w5s_full")


def _assert_page_part_is(
    printed: str, page: str, start: str, end: str | None
) -> None:
    """Every line of `printed` is in `page` between `start` and `end`."""
    text = (REPO / page).read_text(encoding="utf-8")
    part = text[text.index(start) + len(start) :]
    part = part[: part.index(end)] if end is not None else part
    for line in printed.splitlines():
        assert line in part, line


# results/ holds finished runs' records; the docs/results.md parts below
# must be their printout, not figures typed in by hand.
RESULTS = REPO / "results"
RESULTS_PAGE = "docs/results.md"


def test_full_budget_tables_are_what_the_committed_run_prints():
    printed = results_tables.full_budget_table(
        RESULTS, RESULTS / "timings_avx512"
    )
    assert "| 100 of 100 |" in printed
    _assert_page_part_is(
        printed, RESULTS_PAGE, "## 1. The paper's full budget", "## 2."
    )


def test_readme_results_table_is_the_full_budget_row_printed():
    # The README's one table: the header and the full-budget row, beside
    # the paper's figure.
    printed = results_tables.full_budget_table(RESULTS).splitlines()[:3]
    assert printed[2].endswith(f"| {results_tables.PAPER_MAMLPP_5W1S}% |")
    _assert_page_part_is(
        "\n".join(printed), "README.md", "## Results", "## "
    )


def test_seed_rerun_table_is_what_the_committed_runs_print():
    printed = results_tables.seed_table(RESULTS)
    assert "seeds done" not in printed and "not started" not in printed
    _assert_page_part_is(
        printed, RESULTS_PAGE, "## 2b. The same seed rows", "## 3."
    )


def test_ablation_rerun_table_is_what_the_committed_runs_print():
    printed = results_tables.ablation_table(RESULTS, RESULTS / "timings_avx512")
    assert "not started" not in printed
    _assert_page_part_is(
        printed, RESULTS_PAGE, "## 3b. The ablation on", "## 4."
    )
