"""The apps start TensorFlow with the BFC CPU allocator unless told not to."""

import subprocess
import sys

import pytest

from helpers import apps
from mamlpp_tf_scripts import _cpu_allocator

VARIABLE = "TF_CPU_ALLOCATOR_USE_BFC"


def test_default_turns_bfc_on():
    environ = {}
    note = _cpu_allocator.configure(environ)
    assert environ == {VARIABLE: "true"}
    assert "BFC" in note and f"{VARIABLE}=false" in note


@pytest.mark.parametrize("value", ["false", "true", "0"])
def test_the_users_setting_wins(value):
    environ = {VARIABLE: value}
    note = _cpu_allocator.configure(environ)
    assert environ == {VARIABLE: value}
    assert f"{VARIABLE}={value} from the environment" in note


# A process importing the apps' shared module the way every app does, then
# TensorFlow: BFC is the only CPU allocator that reports memory statistics.
_PROBE = """
from mamlpp_tf_scripts import _app
import tensorflow as tf
tf.ones([256, 256]) @ tf.ones([256, 256])
try:
    info = tf.config.experimental.get_memory_info("CPU:0")
    print("bfc", info["peak"] > 0)
except ValueError:
    print("malloc")
"""


# With oneDNN on (TensorFlow's default on CPUs with AVX-512 VNNI/BF16 or
# AMX), TensorFlow's default CPU allocator is its oneDNN allocator, which
# pools large blocks with BFC whatever VARIABLE says; the probes pin
# oneDNN off unless a test asks for it, so that they see VARIABLE's effect
# on every machine.
def _probe(source=_PROBE, **env) -> str:
    environ = {k: v for k, v in apps.ENV.items() if k != VARIABLE}
    environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
    environ.update(env)
    result = subprocess.run(
        [sys.executable, "-c", source],
        capture_output=True,
        text=True,
        timeout=300,
        env=environ,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1]


def test_apps_start_tensorflow_with_bfc():
    assert _probe() == "bfc True"


def test_apps_keep_the_users_malloc():
    assert _probe(**{VARIABLE: "false"}) == "malloc"


def test_with_onednn_on_false_still_pools_as_the_note_says():
    assert (
        _probe(**{VARIABLE: "false", "TF_ENABLE_ONEDNN_OPTS": "1"})
        == "bfc True"
    )


_ONEDNN_PROBE = """
from mamlpp_tf_scripts import _app
print(_app._cpu_allocator.onednn_enabled())
"""


@pytest.mark.parametrize("value,expected", [("0", "False"), ("1", "True")])
def test_the_apps_tell_whether_onednn_is_on(value, expected):
    assert _probe(_ONEDNN_PROBE, TF_ENABLE_ONEDNN_OPTS=value) == expected


def test_the_onednn_note_names_each_state():
    on = _cpu_allocator.onednn_note(True)
    assert "on" in on and f"{VARIABLE}=false does not bring malloc back" in on
    assert "TF_ENABLE_ONEDNN_OPTS=0" in on
    off = _cpu_allocator.onednn_note(False)
    assert off.startswith("oneDNN: off") and "malloc" in off
    unknown = _cpu_allocator.onednn_note(None)
    assert unknown.startswith("oneDNN: could not tell")
