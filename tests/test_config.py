"""MetaLearnerConfig: validation, presets, JSON round trip, every field read."""

import ast
import dataclasses
import functools
import json
import logging
import pathlib

import numpy as np
import pytest

import mamlpp_tf
from mamlpp_tf import config as config_lib
from mamlpp_tf import schedules

PACKAGE_DIR = pathlib.Path(mamlpp_tf.__file__).resolve().parent
FIELDS = [f.name for f in dataclasses.fields(mamlpp_tf.MetaLearnerConfig)]

# (overrides, what the message must say: the field, and how to fix it).
INVALID = [
    ({"num_ways": 1}, r"num_ways must be >= 2 .*got 1.*--num_ways"),
    (
        {"num_inner_steps": 0},
        (
            r"num_inner_steps must be >= 1, got 0.*"
            r"--num_inner_steps"
        ),
    ),
    ({"num_shots": 1.5}, r"num_shots must be an int, got 1\.5 \(float\)"),
    ({"meta_batch_size": True}, r"meta_batch_size must be an int, got True"),
    ({"image_shape": (28, 28)}, r"image_shape must be \(H, W, C\)"),
    ({"image_shape": (28.5, 28, 1)}, r"image_shape must hold ints"),
    ({"image_shape": ("28", 28, 1)}, r"image_shape must hold ints"),
    (
        {"image_shape": (8, 8, 1), "num_stages": 4},
        (
            r"image_shape \(8, 8, 1\) is too small for the conv4 backbone's 4 stages.*at least 16x16"
            r".*Lower num_stages"
        ),
    ),
    ({"downsampling": "avg_pool"}, r"downsampling must be one of .*'avg_pool'"),
    ({"bn_mode": "running"}, r"bn_mode must be one of .*'running'"),
    ({"dtype": "float16"}, r"dtype must be one of .*'float16'"),
    ({"inner_lr_init": 0.0}, r"inner_lr_init must be > 0, got 0\.0"),
    ({"meta_lr": -1e-3}, r"meta_lr must be > 0"),
    (
        {"meta_lr": 1e-4, "min_meta_lr": 1e-3},
        (
            r"min_meta_lr must be in \(0, meta_lr=0\.0001\], got 0\.001.*"
            r"Lower --min_meta_lr or raise --meta_lr"
        ),
    ),
    ({"bn_momentum": 0.0}, r"bn_momentum must be in \(0, 1\], got 0\.0"),
    ({"bn_epsilon": 0.0}, r"bn_epsilon must be > 0"),
    ({"adam_beta2": 1.0}, r"adam_beta2 must be in \[0, 1\), got 1\.0"),
    (
        {"first_order_to_second_order_epoch": -2},
        r"first_order_to_second_order_epoch must be >= -1 .*got -2",
    ),
    ({"meta_grad_clip": 0.0}, r"meta_grad_clip must be None or > 0"),
    ({"max_nonfinite_steps": 0}, r"max_nonfinite_steps must be >= 1"),
]


@pytest.mark.parametrize("overrides,message", INVALID)
def test_invalid_configs_raise_naming_the_field_and_the_fix(overrides, message):
    with pytest.raises(ValueError, match=message):
        mamlpp_tf.MetaLearnerConfig(**overrides)


def test_defaults_and_presets_are_valid():
    for preset in (
        mamlpp_tf.maml,
        mamlpp_tf.first_order_maml,
        mamlpp_tf.mamlpp,
    ):
        assert isinstance(preset(), mamlpp_tf.MetaLearnerConfig)
    assert set(config_lib.PRESETS.values()) == {
        mamlpp_tf.maml,
        mamlpp_tf.first_order_maml,
        mamlpp_tf.mamlpp,
    }


def test_maml_turns_every_mamlpp_part_off():
    config = mamlpp_tf.maml()
    assert not config.learn_inner_lr  # LSLR
    assert not config.multi_step_loss  # MSL
    assert config.first_order_to_second_order_epoch == -1  # no DA
    assert not config.per_step_bn_statistics  # BNRS
    assert not config.per_step_bn_weights  # BNWB
    assert not config.cosine_annealing  # CA
    assert config.second_order


def test_first_order_maml_is_maml_with_the_inner_gradients_stopped():
    assert mamlpp_tf.first_order_maml() == dataclasses.replace(
        mamlpp_tf.maml(), second_order=False
    )


def test_mamlpp_is_what_the_paper_flagfiles_run():
    # One meaning: the authors' configs and flags/maml++_*.cfg, second
    # order from epoch 0.
    config = mamlpp_tf.mamlpp()
    assert config.learn_inner_lr and config.multi_step_loss
    assert config.per_step_bn_statistics and config.per_step_bn_weights
    assert config.cosine_annealing and config.second_order
    assert config.first_order_to_second_order_epoch == -1
    assert all(schedules.use_second_order(config, e) for e in range(100))


def test_mamlpp_offers_the_papers_da_as_an_explicit_option():
    config = mamlpp_tf.mamlpp(paper_da=True)
    # The paper's "first order for the first 50 epochs": epochs 0..49.
    first_order = [
        e for e in range(100) if not schedules.use_second_order(config, e)
    ]
    assert first_order == list(range(50))
    assert config == dataclasses.replace(
        mamlpp_tf.mamlpp(), first_order_to_second_order_epoch=49
    )


@pytest.mark.parametrize(
    "switch,total_epochs", [(1, 2), (2, 2), (5, 3), (49, 50), (49, 4)]
)
def test_a_da_switch_the_run_never_reaches_is_refused(switch, total_epochs):
    # Second order would start at epoch switch + 1 >= total_epochs.
    with pytest.raises(
        ValueError,
        match=rf"^first_order_to_second_order_epoch={switch} switches to "
        rf"second order at epoch {switch + 1}, which a run of "
        rf"total_epochs={total_epochs} \(epochs 0..{total_epochs - 1}\) "
        "never reaches",
    ):
        mamlpp_tf.mamlpp(
            first_order_to_second_order_epoch=switch,
            total_epochs=total_epochs,
        )


def test_a_da_switch_inside_the_run_or_without_second_order_is_valid():
    last = mamlpp_tf.mamlpp(
        first_order_to_second_order_epoch=2, total_epochs=4
    )
    assert schedules.use_second_order(last, 3)  # The run's last epoch.
    # Without second order the field is ignored (first-order MAML).
    mamlpp_tf.first_order_maml(
        first_order_to_second_order_epoch=9, total_epochs=2
    )
    with pytest.raises(ValueError, match="first_order_to_second_order_epoch"):
        mamlpp_tf.mamlpp(paper_da=True, total_epochs=50)


def test_msl_longer_than_the_run_is_a_warning(caplog):
    config = mamlpp_tf.mamlpp(msl_epochs=10, total_epochs=4)
    with caplog.at_level(logging.WARNING, logger="mamlpp_tf.config"):
        assert config_lib.warn_if_msl_outlasts_the_run(config)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith(
        "msl_epochs=10 is longer than the run (total_epochs=4)"
    )
    caplog.clear()
    for quiet in (
        mamlpp_tf.mamlpp(msl_epochs=4, total_epochs=4),
        mamlpp_tf.mamlpp(multi_step_loss=False, msl_epochs=10, total_epochs=4),
    ):
        assert not config_lib.warn_if_msl_outlasts_the_run(quiet)
    assert not caplog.records


def test_presets_take_overrides_and_validate_them():
    assert mamlpp_tf.maml(num_ways=20).num_ways == 20
    assert mamlpp_tf.first_order_maml(num_ways=3).second_order is False
    with pytest.raises(ValueError, match="num_ways must be >= 2"):
        mamlpp_tf.mamlpp(num_ways=1)


def test_config_is_frozen_and_keyword_only():
    config = mamlpp_tf.MetaLearnerConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.num_ways = 3
    with pytest.raises(TypeError):
        mamlpp_tf.MetaLearnerConfig(5)


def test_json_round_trip_gives_an_equal_config():
    config = mamlpp_tf.mamlpp(
        num_ways=3,
        image_shape=(5, 5, 2),
        num_stages=2,
        meta_grad_clip=10.0,
        bn_mode="per_step_running",
        dtype="float64",
    )
    values = json.loads(config.to_json())
    assert isinstance(values["image_shape"], list)  # What JSON gives back.
    restored = mamlpp_tf.MetaLearnerConfig.from_dict(values)
    assert restored == config
    assert restored.image_shape == (5, 5, 2)
    assert hash(restored) == hash(config)
    assert restored.to_json() == config.to_json()


def test_numpy_image_sizes_become_python_ints():
    # Shapes read off numpy arrays hold numpy ints, which json cannot write.
    config = mamlpp_tf.MetaLearnerConfig(
        image_shape=tuple(np.array([28, 28, 1]))
    )
    assert all(type(d) is int for d in config.image_shape)
    assert json.loads(config.to_json())["image_shape"] == [28, 28, 1]


def test_from_dict_rejects_unknown_fields_by_name():
    values = dataclasses.asdict(mamlpp_tf.maml())
    values["num_update_steps"] = 5
    values["inner_lr"] = 0.1
    with pytest.raises(
        ValueError,
        match=r"Unknown MetaLearnerConfig fields "
        r"\['inner_lr', 'num_update_steps'\]",
    ):
        mamlpp_tf.MetaLearnerConfig.from_dict(values)


def test_from_dict_validates():
    values = dataclasses.asdict(mamlpp_tf.maml())
    values["bn_mode"] = "bogus"
    with pytest.raises(ValueError, match="bn_mode must be one of"):
        mamlpp_tf.MetaLearnerConfig.from_dict(values)


@functools.cache
def _reads_outside_config() -> frozenset:
    """Fields read as attributes (`x.name`) in the package outside config.py.

    By name only: a same-named attribute of another object counts too.
    Mentions in strings and comments do not.
    """
    names = set()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        if path == PACKAGE_DIR / "config.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
    return frozenset(names & set(FIELDS))


@pytest.mark.parametrize("name", FIELDS)
def test_every_field_is_read_outside_config(name):
    assert name in _reads_outside_config(), (
        f"MetaLearnerConfig.{name} is never read in mamlpp_tf: give it a "
        "reader or remove the field (STYLE.md section 2)."
    )


def test_a_config_saved_before_backbones_loads_as_conv4():
    saved = json.loads(mamlpp_tf.MetaLearnerConfig().to_json())
    del saved["backbone"], saved["resnet_widths"]
    config = mamlpp_tf.MetaLearnerConfig.from_dict(saved)
    assert config.backbone == "conv4"
    assert config == mamlpp_tf.MetaLearnerConfig()


def test_resnet12_config_round_trips_through_json():
    config = mamlpp_tf.MetaLearnerConfig(
        backbone="resnet12", resnet_widths=[8, 16], image_shape=(4, 4, 3)
    )
    assert config.resnet_widths == (8, 16)
    loaded = mamlpp_tf.MetaLearnerConfig.from_dict(
        json.loads(config.to_json())
    )
    assert loaded == config


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"backbone": "resnet18"}, "backbone must be one of"),
        ({"backbone": "resnet12", "resnet_widths": ()},
         "resnet_widths must be one or more ints >= 1"),
        ({"backbone": "resnet12", "resnet_widths": (64, 0)},
         "resnet_widths must be one or more ints >= 1"),
        # Four blocks halve 15x15 to 0x0.
        ({"backbone": "resnet12", "image_shape": (15, 15, 3)},
         "too small for the resnet12 backbone's 4 stages.*at least 16x16"),
    ],
)
def test_backbone_fields_are_validated(overrides, message):
    with pytest.raises(ValueError, match=message):
        mamlpp_tf.MetaLearnerConfig(**overrides)


def test_a_custom_backbone_takes_any_image_size():
    config = mamlpp_tf.MetaLearnerConfig(backbone="custom",
                                         image_shape=(3, 3, 1))
    assert config.image_shape == (3, 3, 1)
