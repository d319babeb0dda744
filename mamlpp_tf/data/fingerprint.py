"""A source's files: listing a folder, and the fingerprint that keys the
prepared TFDS data."""

from __future__ import annotations

import hashlib
import os
import pathlib


def fingerprint(classes) -> str:
    """A hash of every file's path, size and mtime: changes with the data.

    Keys the prepared TFDS data, so that editing, adding, removing or moving
    a file prepares again instead of loading stale images (a stat costs
    ~5 us/file).

    Args:
      classes: objects with a `files` attribute (a sequence of paths), in a
        fixed order.
    """
    digest = hashlib.sha256()
    for cls in classes:
        for path in cls.files:
            stat = os.stat(path)
            digest.update(
                f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
            )
    return digest.hexdigest()


def visible_entries(folder: pathlib.Path) -> list[os.DirEntry]:
    """Entries of `folder` sorted by name, without hidden ones (.DS_Store)."""
    with os.scandir(folder) as entries:
        return sorted(
            (e for e in entries if not e.name.startswith(".")),
            key=lambda e: e.name,
        )
