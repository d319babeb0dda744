"""tools/import_footprint.py on cheap imports (no TensorFlow child)."""

import sys

import pytest

import import_footprint  # tools/, on sys.path from conftest.py

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="reads /proc/self/statm, which only Linux has",
)


@linux_only
def test_a_private_buffer_shows_in_the_private_part():
    plain = import_footprint.footprint(sys.executable, "import json")
    # 128 MiB written inside the child: private, not library pages.
    big = import_footprint.footprint(
        sys.executable, "import json\nbuf = bytearray(b'x') * (128 << 20)"
    )
    assert 0 < plain["anon_bytes"] < plain["rss_bytes"]
    grown = big["anon_bytes"] - plain["anon_bytes"]
    assert 120 << 20 < grown < 140 << 20


@linux_only
def test_watched_modules_are_reported_and_hiding_one_keeps_it_out():
    seen = import_footprint.footprint(
        sys.executable, "import csv", watch=("csv", "decimal")
    )
    assert seen["loaded"] == ["csv"]
    # Hidden, the import fails like an absent package, with its own error.
    with pytest.raises(RuntimeError, match="csv hidden by import_footprint"):
        import_footprint.footprint(sys.executable, "import csv", ("csv",))
    # A guarded import (as Keras guards matplotlib) goes on without it.
    guarded = import_footprint.footprint(
        sys.executable,
        "try:\n    import csv\nexcept ImportError:\n    pass",
        hidden=("csv",),
        watch=("csv",),
    )
    assert guarded["loaded"] == []
