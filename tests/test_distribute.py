"""tf.distribute, XLA and mixed precision give the plain path's results;
runs move between strategies; two worker processes train in step."""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import apps
from helpers import experiments
from mamlpp_tf import checkpointing
from mamlpp_tf import config as config_lib
from mamlpp_tf import cpu_quota
from mamlpp_tf import distribute
from mamlpp_tf import evaluation
from mamlpp_tf import experiment
from mamlpp_tf import learner as learner_lib
from mamlpp_tf import reporting
from mamlpp_tf import runtime_history

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tiny(**overrides):
    return config_lib.mamlpp(
        num_ways=3,
        num_shots=2,
        num_queries=2,
        meta_batch_size=2,
        image_shape=(8, 8, 1),
        num_filters=4,
        num_stages=2,
        num_inner_steps=2,
        num_eval_inner_steps=2,
        first_order_to_second_order_epoch=-1,
        **overrides,
    )


def _batch(config, seed=0):
    rng = np.random.default_rng(seed)
    t, n = config.meta_batch_size, config.num_ways
    shots, queries = n * config.num_shots, n * config.num_queries
    return {
        "support_x": tf.constant(rng.random((t, shots, 8, 8, 1), np.float32)),
        "support_y": tf.constant(
            np.tile(
                np.repeat(np.arange(n, dtype=np.int32), config.num_shots),
                (t, 1),
            )
        ),
        "query_x": tf.constant(rng.random((t, queries, 8, 8, 1), np.float32)),
        "query_y": tf.constant(
            np.tile(
                np.repeat(np.arange(n, dtype=np.int32), config.num_queries),
                (t, 1),
            )
        ),
    }


def _pair(config, **kwargs):
    keras.utils.set_random_seed(0)
    plain = learner_lib.MetaLearner(config)
    other = learner_lib.MetaLearner(config, **kwargs)
    for a, b in zip(plain.trainable_variables, other.trainable_variables):
        b.assign(a.numpy())
    return plain, other


def _assert_same_weights(plain, other, atol):
    for name, a, b in zip(
        plain.trainable_variable_names,
        plain.trainable_variables,
        other.trainable_variables,
    ):
        if name.startswith("network/conv") and name.endswith("/bias"):
            # BN cancels conv biases: their meta-gradient is rounding noise,
            # which Adam turns into +-lr steps of either sign.
            continue
        np.testing.assert_allclose(
            b.numpy(), a.numpy(), atol=atol, err_msg=name
        )


def test_mirrored_two_logical_cpus_matches_one_device():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests/helpers/mirrored_equivalence.py")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    for epoch in (0, 1):
        assert result[f"loss_diff_{epoch}"] <= 1e-5 * max(
            1.0, result[f"loss_{epoch}"]
        )
    for name, diff in result["per_variable"].items():
        if name.startswith("network/conv") and name.endswith("/bias"):
            continue  # See _assert_same_weights.
        assert diff <= 1e-5, (name, diff)
    assert result["bn_stat_diff"] <= 1e-5
    assert result["eval_accuracy_diff"] == 0.0
    assert result["eval_task_count"] == 4
    assert result["pipeline_matches"]
    # The meta-loss and meta-gradients are means over the global
    # meta-batch, on one replica and on two, against values worked out by
    # hand: with every query logit 0 (tests/helpers), each of the 4 tasks
    # has loss ln 3 = 1.0986123 and dense-bias gradient 1/3 - one_hot of
    # its query class, classes 0, 1, 2, 0. Mean over the tasks: class 0
    # (-2/3 - 2/3 + 1/3 + 1/3) / 4 = -1/6; classes 1 and 2 (-2/3 + 3 * 1/3)
    # / 4 = 1/12. (A sum over the tasks would be 4x these; a per-replica
    # mean summed over the replicas, 2x.)
    for key in ("closed_form_single", "closed_form_mirrored"):
        loss, bias_gradient = result[key]
        np.testing.assert_allclose(loss, 1.0986123, rtol=1e-6, err_msg=key)
        np.testing.assert_allclose(
            bias_gradient,
            [-0.16666667, 0.08333333, 0.08333333],
            rtol=1e-5,
            err_msg=key,
        )


def test_jit_compile_matches_the_plain_step():
    config = _tiny()
    plain, jitted = _pair(config, jit_compile=True)
    batch = _batch(config)
    m1, m2 = plain.train_step(batch, 0), jitted.train_step(batch, 0)
    np.testing.assert_allclose(m2["loss"], m1["loss"], rtol=1e-5)
    _assert_same_weights(plain, jitted, atol=1e-5)
    _, l1 = plain.eval_step(batch)
    _, l2 = jitted.eval_step(batch)
    np.testing.assert_allclose(l2, l1, atol=1e-4)


def test_bfloat16_keeps_state_in_float32_and_stays_close():
    config = _tiny()
    plain, mixed = _pair(config, mixed_precision="bfloat16")
    batch = _batch(config)
    m1, m2 = plain.train_step(batch, 0), mixed.train_step(batch, 0)
    np.testing.assert_allclose(m2["loss"], m1["loss"], rtol=3e-2)
    assert m2["loss"].dtype == np.float32
    assert {v.dtype for v in mixed.trainable_variables} == {"float32"}
    for norm in mixed.norm_layers:
        assert norm.moving_mean.dtype == "float32"
    # Only the convolutions/matmuls round: it is not the plain graph.
    assert m2["loss"] != m1["loss"]


def test_runtime_config_rejects_bad_input():
    with pytest.raises(ValueError, match="strategy must be one of"):
        distribute.RuntimeConfig(strategy="horovod")
    with pytest.raises(ValueError, match="--tpu=local"):
        distribute.RuntimeConfig(strategy="tpu")
    with pytest.raises(ValueError, match="only read with strategy='tpu'"):
        distribute.RuntimeConfig(strategy="mirrored", tpu="local")
    with pytest.raises(ValueError, match="mixed_precision must be one of"):
        distribute.RuntimeConfig(mixed_precision="float16")
    with pytest.raises(ValueError, match="TF_CONFIG"):
        env = os.environ.pop("TF_CONFIG", None)
        try:
            distribute.make_strategy("multi_worker")
        finally:
            if env is not None:
                os.environ["TF_CONFIG"] = env


def test_meta_batch_must_split_over_replicas():
    class FakeStrategy:
        num_replicas_in_sync = 3

    with pytest.raises(ValueError, match="does not split over 3 replicas"):
        from mamlpp_tf import data as data_lib

        distribute.episode_batches(
            FakeStrategy(),
            None,
            data_lib.EpisodeConfig(
                num_ways=2, num_shots=1, num_queries=1, meta_batch_size=4
            ),
            split="train",
        )


# -- The apps under strategies: tiny smoke.cfg runs in subprocesses -------

SMOKE = apps.FLAGS_DIR / "smoke.cfg"
# Two MAML++ meta-steps, second order with MSL, one checkpoint after each,
# validation and the test on 2 fixed tasks. meta_batch_size=2: one task
# per replica on 2 replicas.
TINY_RUN = (
    f"--flagfile={SMOKE}",
    "--total_epochs=1",
    "--iterations_per_epoch=2",
    "--first_order_to_second_order_epoch=-1",
    "--num_eval_tasks=2",
    "--top_k_ensemble=1",
    "--checkpoint_every=1",
)
RUN_TIMEOUT_S = 300


def _train(workdir, tfds_dir, *args):
    result = apps.run(
        "train",
        *TINY_RUN,
        f"--workdir={workdir}",
        f"--tfds_data_dir={tfds_dir}",
        *args,
        timeout=RUN_TIMEOUT_S,
    )
    assert result.returncode == 0, apps.describe(result)
    return result


def _checkpoint_values(prefix) -> dict:
    """Network, LSLR and Adam values saved at `prefix`, by key."""
    reader = tf.train.load_checkpoint(str(prefix))
    return {
        key: reader.get_tensor(key)
        for key in reader.get_variable_to_shape_map()
        if key.split("/")[0] in ("network", "inner_rates", "optimizer")
    }


def _is_conv_bias(key) -> bool:
    # See _assert_same_weights: rounding noise, amplified by Adam.
    return "-conv" in key and key.split("/")[1].endswith("-bias")


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def mirrored_run(tmp_path_factory, tfds_dir):
    """The workdir of a tiny run on MirroredStrategy over 2 logical CPUs."""
    workdir = tmp_path_factory.mktemp("mirrored") / "run"
    _train(workdir, tfds_dir, "--strategy=mirrored", "--logical_cpu_devices=2")
    return workdir


def test_a_mirrored_run_restores_evaluates_and_resumes_on_one_device(
    mirrored_run, tmp_path
):
    [runtime] = runtime_history.read_history(mirrored_run)
    assert runtime["strategy"] == "mirrored"
    assert runtime["num_replicas_in_sync"] == 2

    # Restore into a learner on the default strategy (this process).
    config = experiment.read_config(mirrored_run)
    learner = learner_lib.MetaLearner(config.learner)
    progress = checkpointing.TrainCheckpoint(
        learner, mirrored_run, keep=config.keep_checkpoints
    ).restore_latest()
    assert (progress.epoch, progress.iteration) == (1, 0)
    saved = _checkpoint_values(mirrored_run / "checkpoints" / "ckpt-2")
    # What the restored learner holds, saved again from this process.
    restored = _checkpoint_values(
        checkpointing.TrainCheckpoint(
            learner, tmp_path / "restored", keep=2
        ).save(progress, step=2)
    )
    assert saved.keys() == restored.keys()
    for key, value in saved.items():
        np.testing.assert_array_equal(restored[key], value, err_msg=key)

    # Evaluate its top-k weights on one device: the validation the run
    # made on 2 replicas, to rounding.
    summary = evaluation.evaluate_workdir(mirrored_run, split="val")
    row = reporting.MetricsCsv(mirrored_run).rows()[0]
    assert summary["num_val_tasks"] == 2
    assert summary["single_best_accuracy_mean"] == pytest.approx(
        float(row["val_accuracy"])
    )
    assert summary["single_best_loss"] == pytest.approx(
        float(row["val_loss"]), rel=1e-5
    )

    # Resume it on one device from its mid-epoch checkpoint (ckpt-1, as if
    # killed after meta-step 1): the runtime is not part of the experiment.
    # (The same total_epochs: under CA a new one is refused.)
    workdir = tmp_path / "resumed"
    shutil.copytree(mirrored_run, workdir)
    checkpoints = workdir / "checkpoints"
    for file in checkpoints.glob("ckpt-2.*"):
        file.unlink()
    tf.compat.v1.train.update_checkpoint_state(
        str(checkpoints),
        str(checkpoints / "ckpt-1"),
        all_model_checkpoint_paths=[str(checkpoints / "ckpt-1")],
        # Newer than the manager's last_preserved_timestamp (else unlisted).
        all_model_checkpoint_timestamps=[time.time()],
    )
    (workdir / "test_summary.json").unlink()
    result = _train(workdir, config.data.tfds_data_dir)
    assert "Restored" in result.stderr
    assert "epoch 0, iteration 1" in result.stderr
    assert [r["epoch"] for r in reporting.MetricsCsv(workdir).rows()] == [
        "0"
    ]
    # The history keeps the mirrored training start and the evaluation
    # above, and appends this start, which resumed at meta-step 1 (epoch
    # 0) on one device.
    history = runtime_history.read_history(workdir)
    assert [(e["command"], e["strategy"]) for e in history] == [
        ("train", "mirrored"),
        ("evaluate", "default"),
        ("train", "default"),
    ]
    assert [e["num_replicas_in_sync"] for e in history] == [2, 1, 1]
    assert (history[1]["split"], history[1]["epochs"]) == ("val", [0])
    assert history[2]["start_step"] == 1


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def test_two_workers_train_in_step_and_only_the_chief_writes_the_run(
    mirrored_run, tfds_dir, tmp_path
):
    # Two processes on this machine, one CPU replica each. The synthetic
    # data is already prepared in tfds_dir (by mirrored_run), so the
    # workers only read it.
    workdir = tmp_path / "run"
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    command = apps.command(
        "train",
        *TINY_RUN,
        f"--workdir={workdir}",
        f"--tfds_data_dir={tfds_dir}",
        "--strategy=multi_worker",
    )
    processes, logs = [], []
    try:
        for index in range(2):
            tf_config = {
                "cluster": cluster,
                "task": {"type": "worker", "index": index},
            }
            logs.append(tmp_path / f"worker_{index}.log")
            with open(logs[-1], "w") as log_file:
                processes.append(
                    subprocess.Popen(
                        command,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                        cwd=apps.REPO,
                        env={**apps.ENV, "TF_CONFIG": json.dumps(tf_config)},
                    )
                )
        deadline = time.monotonic() + RUN_TIMEOUT_S
        for process in processes:
            process.wait(timeout=max(deadline - time.monotonic(), 1.0))
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"The workers ran past {RUN_TIMEOUT_S} s:\n"
            + "\n".join(p.read_text()[-3000:] for p in logs)
        )
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for process, log_path in zip(processes, logs, strict=True):
        assert process.returncode == 0, log_path.read_text()[-5000:]

    # The chief (worker 0) wrote the run directory; worker 1 only its own
    # checkpoints, top-k weights and test summary, beside it.
    worker_dir = workdir / "workers" / "worker_1"
    assert sorted(p.name for p in workdir.iterdir()) == sorted(
        experiments.RUN_DIRECTORY_ENTRIES + ["workers"]
    )
    assert sorted(p.name for p in (workdir / "workers").iterdir()) == [
        "worker_1"
    ]
    assert sorted(p.name for p in worker_dir.iterdir()) == [
        "checkpoints",
        "test_summary.json",
        "top_k",
    ]
    assert len(reporting.MetricsCsv(workdir).rows()) == 1
    [runtime] = runtime_history.read_history(workdir)
    assert runtime["num_replicas_in_sync"] == 2
    assert json.loads((worker_dir / "test_summary.json").read_text()) == (
        json.loads((workdir / "test_summary.json").read_text())
    )

    # Both workers end with the same weights, BN statistics, LSLR rates
    # and Adam state, bit for bit...
    chief = _checkpoint_values(workdir / "checkpoints" / "ckpt-2")
    worker = _checkpoint_values(worker_dir / "checkpoints" / "ckpt-2")
    assert chief.keys() == worker.keys()
    for key, value in chief.items():
        np.testing.assert_array_equal(worker[key], value, err_msg=key)
    # ...which the second meta-step moved...
    first = _checkpoint_values(workdir / "checkpoints" / "ckpt-1")
    kernels = [k for k in chief if k.startswith("network/") and "-kernel" in k]
    assert len(kernels) == 5
    for key in kernels:
        assert not np.array_equal(chief[key], first[key]), key
    # ...the ones two replicas in one process reach on the same tasks (each
    # worker fed its own half of every meta-batch).
    mirrored = _checkpoint_values(mirrored_run / "checkpoints" / "ckpt-2")
    for key, value in chief.items():
        if key.startswith(("network/", "inner_rates/")) and not (
            _is_conv_bias(key)
        ):
            np.testing.assert_allclose(
                value, mirrored[key], atol=1e-5, err_msg=key
            )


@pytest.mark.parametrize(
    "affinity,quota,parallel_tasks,expected",
    [
        # 8 CPUs in the mask, no quota, 2 tasks in flight: 4 threads each.
        (set(range(8)), None, 2, 4),
        # Pinned to 3 of the host's 64 CPUs: 3 // 2 = 1 thread each.
        ({4, 9, 17}, None, 2, 1),
        # A 6-CPU cgroup quota on 16 CPUs: 6 // 3 = 2 threads each.
        (set(range(16)), 6.0, 3, 2),
        # A 2.5-CPU quota runs 3 threads: 3 // 2 = 1.
        (set(range(16)), 2.5, 2, 1),
        # More tasks in flight than CPUs: still one thread each.
        ({0}, None, 4, 1),
    ],
)
def test_intra_op_threads_share_the_usable_cpus_between_tasks_in_flight(
    monkeypatch, affinity, quota, parallel_tasks, expected
):
    monkeypatch.setattr(
        os, "sched_getaffinity", lambda pid: affinity, raising=False
    )
    monkeypatch.setattr(os, "cpu_count", lambda: 64)  # Never counted.
    monkeypatch.setattr(cpu_quota, "cgroup_cpu_limit", lambda: quota)
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind: [])
    auto = distribute.RuntimeConfig(parallel_tasks=parallel_tasks)
    assert distribute.intra_op_threads(auto) == expected


def test_intra_op_threads_is_tensorflows_default_on_gpus_or_one_task(
    monkeypatch,
):
    monkeypatch.setattr(
        tf.config,
        "list_physical_devices",
        lambda kind: ["/physical_device:GPU:0"] if kind == "GPU" else [],
    )
    auto = distribute.RuntimeConfig(parallel_tasks=2)
    assert distribute.intra_op_threads(auto) is None
    assert (
        distribute.intra_op_threads(distribute.RuntimeConfig(parallel_tasks=1))
        is None
    )
    assert (
        distribute.intra_op_threads(
            distribute.RuntimeConfig(parallel_tasks=2, intra_op_threads=3)
        )
        == 3
    )
    with pytest.raises(ValueError, match="intra_op_threads must be None"):
        distribute.RuntimeConfig(intra_op_threads=0)


@pytest.mark.parametrize(
    "image_shape, expected",
    [
        ((28, 28, 1), 2),  # Omniglot: 784 pixels.
        ((32, 32, 3), 2),  # 1,024 pixels, the largest "small" image.
        ((33, 32, 3), 1),  # 1,056 pixels.
        ((84, 84, 3), 1),  # mini-ImageNet.
    ],
)
def test_tasks_in_flight_default_to_the_image_size(image_shape, expected):
    auto = distribute.RuntimeConfig()
    resolved = distribute.resolve_parallel_tasks(auto, image_shape)
    assert resolved.parallel_tasks == expected
    # A value the user set is kept whatever the images.
    chosen = distribute.RuntimeConfig(parallel_tasks=3)
    assert distribute.resolve_parallel_tasks(chosen, image_shape) is chosen


def test_unresolved_tasks_in_flight_count_as_one(monkeypatch):
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind: [])
    auto = distribute.RuntimeConfig()
    assert auto.tasks_in_flight == 1
    assert distribute.learner_options(auto)["parallel_tasks"] == 1
    assert distribute.intra_op_threads(auto) is None
    with pytest.raises(ValueError, match="None \\(automatic\\) or >= 1"):
        distribute.RuntimeConfig(parallel_tasks=0)
