"""Shared fixtures: where the real data lives, and deterministic seeds."""

import os
import pathlib
import sys

import pytest

# The repository's own tooling (tools/: results tables, benchmark tables,
# import footprints) is not installed; its tests import it from there.
TOOLS_DIR = pathlib.Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS_DIR))

# .ci/run points this at ../shared/data/omniglot. In CI the real-data tests
# must run, so a missing folder there is a failure, not a skip.
OMNIGLOT_ENV = "MAMLPP_OMNIGLOT_DIR"


@pytest.fixture(scope="session")
def omniglot_dir() -> pathlib.Path:
    """The real Omniglot root (images_background/, images_evaluation/)."""
    value = os.environ.get(OMNIGLOT_ENV)
    reason = None
    if not value:
        reason = f"{OMNIGLOT_ENV} is not set"
    elif not (pathlib.Path(value) / "images_background").is_dir():
        reason = f"{OMNIGLOT_ENV}={value} has no images_background/ folder"
    if reason is None:
        # Absolute, so that a relative value (the README's default,
        # ../shared/data/omniglot) still names the folder from a temporary
        # directory, a subprocess's cwd or a symlink's target.
        return pathlib.Path(value).resolve()
    message = (
        f"real Omniglot is needed and {reason}; point {OMNIGLOT_ENV} at the "
        "folder holding images_background/ and images_evaluation/ "
        "(../shared/data/omniglot in this workplace)"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
