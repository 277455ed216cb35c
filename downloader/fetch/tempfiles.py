"""The fetcher's temp files: ``<pid>-<uuid>.part`` in the temp dir.

The pid in the name lets a restarted process tell files left by dead processes (safe to delete)
from those of fetchers still running on the same host: Storage.clean_temp removes them.
"""

from __future__ import annotations

import os
from pathlib import Path
from uuid import uuid4

from downloader.storage.base import NEW_FILE_FLAGS

TEMP_SUFFIX = ".part"


def create_temp_file(temp_dir: Path, pid: int) -> tuple[Path, int]:
    """A new, exclusively created ``<pid>-<uuid>.part`` file in temp_dir and its descriptor."""
    path = temp_dir / f"{pid}-{uuid4().hex}{TEMP_SUFFIX}"
    try:
        return path, os.open(path, NEW_FILE_FLAGS, 0o600)
    except FileNotFoundError:  # removed by an engine of this process that stopped
        temp_dir.mkdir(parents=True, exist_ok=True)
        return path, os.open(path, NEW_FILE_FLAGS, 0o600)
