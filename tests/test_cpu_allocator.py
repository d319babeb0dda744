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


def _probe(**env) -> str:
    environ = {k: v for k, v in apps.ENV.items() if k != VARIABLE}
    environ.update(env)
    result = subprocess.run(
        [sys.executable, "-c", _PROBE],
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

