"""Runs the mamlpp-* apps as a user would: separate processes."""

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
FLAGS_DIR = REPO / "flags"
SCRIPTS_DIR = REPO / "scripts"
# Quiet TensorFlow's C++ start-up lines so failures show the app's output.
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def console_script(name: str) -> pathlib.Path:
    """The installed console script `name` (e.g. "mamlpp-train").

    It sits next to the Python running the tests once the package is
    installed (`pip install -e .`).
    """
    path = pathlib.Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: install the package first (pip install -e "
            f"{REPO})."
        )
    return path


def command(app: str, *args, installed: bool = True) -> list[str]:
    """The command line of an app.

    Args:
      app: "train", "evaluate" or "export".
      *args: its flags.
      installed: the console script `mamlpp-<app>`; False runs
        `python scripts/<app>.py`, which must work too.
    """
    if installed:
        return [str(console_script(f"mamlpp-{app}")), *map(str, args)]
    return [sys.executable, str(SCRIPTS_DIR / f"{app}.py"), *map(str, args)]


def run(app: str, *args, installed: bool = True, timeout: float = 600):
    """Runs the app to completion; returns the CompletedProcess."""
    return subprocess.run(
        command(app, *args, installed=installed),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=ENV,
        check=False,
    )


def describe(result) -> str:
    """The end of a finished app's output, for assertion messages."""
    return (
        f"exit {result.returncode}\n--- stdout\n{result.stdout[-3000:]}"
        f"\n--- stderr\n{result.stderr[-5000:]}"
    )
