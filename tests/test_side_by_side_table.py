"""docs/benchmarks.md's side-by-side tables, on made-up benchmark files.

Expected cells are worked out by hand: speed-up = the authors' seconds over
ours, memory in GB with what the process holds above its import.
"""

import json

import side_by_side_table  # tools/, on sys.path from conftest.py


def _write(folder, name, seconds, peak, imported=None, **extra):
    figures = {
        "seconds_per_iteration": seconds,
        "peak_rss_bytes": peak,
        "device": "CPU: test",
        **extra,
    }
    if imported is not None:
        figures["import_rss_bytes"] = imported
    (folder / f"{name}.json").write_text(json.dumps(figures))


def test_speed_up_memory_and_target_cells(tmp_path):
    # 3.0 / 1.25 = 2.40x; peaks 1.50 GB (1.50 - 0.60 = 0.90 above import)
    # and 1.00 GB (1.00 - 0.25 = 0.75 above import).
    _write(tmp_path, "omniglot_5way_1shot_train_msl_ours", 1.25, 1.5e9, 0.6e9)
    _write(
        tmp_path, "omniglot_5way_1shot_train_msl_authors", 3.0, 1.0e9, 0.25e9
    )
    # 4.0 / 1.0 = 4.00x with less memory: the target is met.
    _write(tmp_path, "omniglot_5way_1shot_eval_ours", 1.0, 0.5e9)
    _write(tmp_path, "omniglot_5way_1shot_eval_authors", 4.0, 0.8e9)
    lines = side_by_side_table.speed_table(tmp_path).splitlines()
    assert (
        "| Omniglot 5w1s | train, MSL on | 1.250 | 3.000 | 2.40x "
        "| 1.50 GB (0.90) | 1.00 GB (0.75) | no |"
    ) in lines
    assert (
        "| Omniglot 5w1s | eval | 1.000 | 4.000 | 4.00x | 0.50 GB "
        "| 0.80 GB | yes |"
    ) in lines
    assert "| Omniglot 5w1s | train, MSL off | not run yet | | | | | |" in lines


def test_a_failed_side_is_named_not_tabulated(tmp_path):
    _write(tmp_path, "omniglot_20way_1shot_eval_ours", 1.2, 0.8e9)
    (tmp_path / "omniglot_20way_1shot_eval_authors.log").write_text("boom")
    table = side_by_side_table.speed_table(tmp_path)
    assert (
        "| Omniglot 20w1s | eval | 1.200 |  | not measured (authors' run "
        "failed: see its log) | | | |"
    ) in table.splitlines()


def test_memory_options_rows(tmp_path):
    _write(
        tmp_path,
        "mini_imagenet_5way_5shot_train_msl_ours+tasks2+malloc",
        19.0,
        6.24e9,
        0.63e9,
        cpu_system_seconds_per_iteration=11.78,
    )
    table = side_by_side_table.memory_table(tmp_path)
    assert table.splitlines()[-1] == (
        "| mini-ImageNet 5w5s | 2 | malloc | 19.000 | 6.24 GB (5.61) | 11.78 |"
    )


def test_private_memory_table(tmp_path):
    # Ours: 1.14 GB resident, 0.74 GB of it private; theirs 0.91 and 0.80.
    _write(
        tmp_path,
        "omniglot_5way_1shot_train_msl_ours",
        1.0,
        1.14e9,
        peak_anon_bytes=0.74e9,
    )
    _write(
        tmp_path,
        "omniglot_5way_1shot_train_msl_authors",
        1.7,
        0.91e9,
        peak_anon_bytes=0.80e9,
    )
    # Without the private peak on one side: no row.
    _write(tmp_path, "omniglot_5way_1shot_eval_ours", 0.3, 0.9e9)
    _write(
        tmp_path,
        "omniglot_5way_1shot_eval_authors",
        0.6,
        0.8e9,
        peak_anon_bytes=0.7e9,
    )
    lines = side_by_side_table.private_memory_table(tmp_path).splitlines()
    assert lines[2:] == [
        "| Omniglot 5w1s | train, MSL on | 1.14 GB | 0.91 GB | 0.74 GB "
        "| 0.80 GB | no / yes |"
    ]


def test_no_private_memory_table_without_the_figures(tmp_path):
    _write(tmp_path, "omniglot_5way_1shot_eval_ours", 0.3, 0.9e9)
    _write(tmp_path, "omniglot_5way_1shot_eval_authors", 0.6, 0.8e9)
    assert side_by_side_table.private_memory_table(tmp_path) is None
