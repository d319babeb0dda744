"""mamlpp-benchmark runs once on the smallest configuration and reports."""

import json

import pytest

from helpers import apps
from mamlpp_tf import benchmark
from mamlpp_tf import config as config_lib

FIGURES = {
    "trace_seconds",
    "seconds_per_iteration",
    "iterations_per_second",
    "peak_rss_bytes",
    "setup_rss_bytes",
    "import_rss_bytes",
    "first_call_peak_rss_bytes",
    "peak_anon_bytes",
    "first_call_peak_anon_bytes",
    "import_anon_bytes",
    "sampled_peak_rss_bytes",
    "first_call_seconds",
    "device",
    "tensorflow_version",
    "runtime",
    "config",
}


def test_benchmark_app_on_the_smoke_config(tmp_path):
    output = tmp_path / "bench.json"
    result = apps.run(
        "benchmark",
        f"--flagfile={apps.FLAGS_DIR / 'smoke.cfg'}",
        "--steps=2",
        "--warmup=0",
        f"--output_json={output}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(output.read_text())
    assert FIGURES <= set(figures)
    assert figures["phase"] == "train"
    assert figures["seconds_per_iteration"] > 0
    assert figures["iterations_per_second"] == pytest.approx(
        1 / figures["seconds_per_iteration"], rel=1e-2
    )
    assert figures["peak_rss_bytes"] > 100e6  # TensorFlow alone is more.
    assert 100e6 < figures["setup_rss_bytes"] <= figures["peak_rss_bytes"]
    assert 100e6 < figures["import_rss_bytes"] <= figures["peak_rss_bytes"]
    assert (
        figures["setup_rss_bytes"]
        <= figures["first_call_peak_rss_bytes"]
        <= figures["peak_rss_bytes"]
    )
    # The private part of the resident set, sampled: below the resident
    # peak (TensorFlow's libraries are file pages), above what TensorFlow
    # held once imported (the model, the batch, the step's tensors).
    assert (
        figures["import_anon_bytes"]
        < figures["first_call_peak_anon_bytes"]
        <= figures["peak_anon_bytes"]
        < figures["sampled_peak_rss_bytes"]
    )
    # Sampling can only miss a peak, never exceed the kernel's exact one
    # (its counters lag by a few pages per thread: 16 MiB of slack).
    assert figures["sampled_peak_rss_bytes"] <= (
        figures["peak_rss_bytes"] + 16 * 2**20
    )
    assert 0 <= figures["trace_seconds"] < figures["first_call_seconds"]
    # smoke.cfg: first order in epoch 0 (DA), MSL on.
    assert figures["second_order"] is False
    assert figures["multi_step_loss"] is True
    assert figures["config"]["num_ways"] == 5
    # The app chose the allocator before TensorFlow loaded, and says so.
    assert "TF_CPU_ALLOCATOR_USE_BFC" in figures["allocator_environment"]
    # 28x28 images: two tasks in flight by default.
    assert figures["runtime"]["parallel_tasks"] == 2
    assert figures["cpu_user_seconds_per_iteration"] > 0
    assert figures["cpu_system_seconds_per_iteration"] >= 0
    assert figures["minor_page_faults_per_iteration"] >= 0


def _tiny_maml(num_queries):
    """MAML, 2-way 1-shot on 8x8 images: seconds to trace and run."""
    return config_lib.maml(
        num_ways=2,
        num_shots=1,
        num_queries=num_queries,
        meta_batch_size=2,
        image_shape=(8, 8, 1),
        num_filters=4,
        num_stages=2,
        num_inner_steps=1,
        num_eval_inner_steps=1,
    )


def test_eval_phase_and_random_batch_shapes():
    config = _tiny_maml(num_queries=3)
    batch = benchmark.random_batch(config)
    assert batch["query_x"].shape == (2, 6, 8, 8, 1)
    assert batch["support_y"].shape == (2, 2)
    figures = benchmark.run_benchmark(
        config,
        benchmark.BenchmarkConfig(phase="eval", steps=1, warmup=0),
        log=lambda *_: None,
    )
    assert figures["phase"] == "eval"
    assert figures["second_order"] is False


def test_profile_reports_op_type_shares_of_the_kernel_time():
    config = _tiny_maml(num_queries=1)
    figures = benchmark.run_benchmark(
        config,
        benchmark.BenchmarkConfig(steps=1, warmup=0, profile_steps=1),
        log=lambda *_: None,
    )
    shares = dict(figures["op_time_shares"])
    convolutions = shares.pop("all convolutions")
    assert 0 < convolutions < 1
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-3)
    assert any("Conv2D" in name for name in shares)


def test_bad_benchmark_config():
    with pytest.raises(ValueError, match="phase must be one of"):
        benchmark.BenchmarkConfig(phase="serve")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        benchmark.BenchmarkConfig(steps=0)
    with pytest.raises(ValueError, match="profile_steps"):
        benchmark.BenchmarkConfig(profile_steps=-1)
    with pytest.raises(ValueError, match="memory_limit_bytes must be > 0"):
        benchmark.BenchmarkConfig(memory_limit_bytes=0)


def test_a_part_switched_off_a_paper_flagfile_ignores_its_settings_aloud(
    tmp_path,
):
    # The paper flagfile sets --msl_epochs and the DA epoch; switching MSL
    # and second order off on the command line is an ablation, not a
    # contradiction: each ignored setting is named in a warning.
    out = tmp_path / "figures.json"
    result = apps.run(
        "benchmark",
        "--flagfile=flags/maml++_omniglot_5way_1shot.cfg",
        "--multi_step_loss=false", "--second_order=false",
        "--steps=1", "--warmup=0", f"--output_json={out}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("--msl_epochs=10 from the flagfile has no effect with "
            "--multi_step_loss=false: ignored.") in result.stderr
    assert ("--first_order_to_second_order_epoch=-1 from the flagfile has "
            "no effect with --second_order=false: ignored.") in result.stderr
    figures = json.loads(out.read_text())
    assert figures["second_order"] is False
    assert figures["multi_step_loss"] is False


def test_a_measurement_past_the_memory_limit_stops_with_status_3(tmp_path):
    # TensorFlow alone takes more than 0.1 GB: the limit is passed before
    # the first step finishes.
    out = tmp_path / "figures.json"
    result = apps.run(
        "benchmark",
        f"--flagfile={apps.FLAGS_DIR / 'smoke.cfg'}",
        "--steps=1", "--warmup=0", "--memory_limit_gb=0.1",
        f"--output_json={out}",
    )
    assert result.returncode == 3, result.stderr[-3000:]
    assert "past --memory_limit_gb=0.1" in result.stderr
    figures = json.loads(out.read_text())
    assert figures["memory_limit_exceeded"] is True
    assert figures["memory_limit_bytes"] == 10**8
    assert figures["rss_bytes_when_stopped"] > 10**8
    assert figures["device"].startswith(("CPU: ", "GPU: "))
    assert "seconds_per_iteration" not in figures


def test_contradictory_flags_are_a_refused_request():
    # --msl_epochs does nothing without MSL: refused in one line, exit 2.
    result = apps.run(
        "benchmark",
        f"--flagfile={apps.FLAGS_DIR / 'smoke.cfg'}",
        "--multi_step_loss=false",
        "--msl_epochs=3",
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in result.stderr


def test_benchmark_needs_no_data_dir_for_a_real_dataset(tmp_path):
    # The paper flagfiles name datasets that need --data_dir; the benchmark
    # uses random inputs and must not ask for one.
    output = tmp_path / "bench.json"
    result = apps.run(
        "benchmark",
        f"--flagfile={apps.FLAGS_DIR / 'maml++_mini_imagenet_5way_1shot.cfg'}",
        "--num_filters=4",
        "--num_queries=1",
        "--phase=eval",
        "--steps=1",
        "--warmup=0",
        f"--output_json={output}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(output.read_text())
    assert figures["config"]["image_shape"] == [84, 84, 3]
    # Large images: one task in flight unless --parallel_tasks says more.
    assert figures["runtime"]["parallel_tasks"] == 1


@pytest.mark.parametrize(
    "cpu_flags, expected",
    [
        (["fpu", "avx", "avx2", "fma"], "AVX2"),
        (["avx", "avx2", "avx512f", "avx512bw"], "AVX-512"),
        (["avx2", "avx512f", "avx512_bf16"], "AVX-512 BF16"),
        (["sse4_2", "avx"], "AVX"),
        (["neon", "asimd"], ""),
    ],
)
def test_speed_figures_name_the_vector_extension(cpu_flags, expected):
    assert benchmark.vector_isa(cpu_flags) == expected
