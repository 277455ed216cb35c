"""Media files on a local (or mounted) filesystem under MEDIA_ROOT."""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from downloader.storage.base import (
    DEFAULT_CHUNK_SIZE,
    NEW_FILE_FLAGS,
    StorageError,
    check_key,
    check_prefix,
    clean_temp_dir,
    iter_stream,
    write_all,
)

TEMP_DIR_NAME = ".tmp"


MADE_FOLDERS_KEPT = 4096


class LocalStorage:
    """Objects are files `<root>/<key>`; `.part` files live in `<root>/.tmp/<pid>` (same
    filesystem, so publishing is one atomic `os.replace`)."""

    name = "local"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        # Folders made by this process: a product's images share one, and products are
        # claimed in order, so a few thousand recent ones save nearly every mkdir. Strings,
        # not Paths (a Path costs ~10x the memory: 50,000 of them were 25 MB).
        self._made_folders: set[str] = set()
        self._root = str(self.root)
        self._temp_root = str(self.root / TEMP_DIR_NAME)
        self._part_numbers = itertools.count()

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    # -- paths -------------------------------------------------------------------------------

    def path(self, key: str) -> Path:
        """The file that holds `key` (the key is validated)."""
        return self.root / check_key(key)

    def temp_dir(self) -> Path:
        """This process's own folder, `.tmp/<pid>`: processes creating files in one shared
        folder serialise on its lock (a `perf` profile of two engines showed ~6% of their CPU
        spinning on it)."""
        directory = Path(self._own_temp())
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def _own_temp(self) -> str:
        return f"{self._temp_root}/{os.getpid()}"  # the pid at call time: safe across fork

    # -- writing -----------------------------------------------------------------------------

    def put_bytes(self, data: bytes, key: str, content_type: str | None = None) -> None:
        """Publish `data` under `key` atomically: written to a `.part` file in the temp folder,
        then renamed into place, so a file at a final key is never half-written (a crash
        mid-write leaves only a `.part` file, which `clean_temp` removes)."""
        fd, staging = self._new_part_file()
        try:
            try:
                write_all(fd, data)
            finally:
                os.close(fd)
            self.put(staging, key)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staging)
            raise

    def _new_part_file(self) -> tuple[int, str]:
        """A new `<pid>-<n>.part` in this process's temp folder, opened for writing. Numbered,
        not random: tempfile's random names cost more than the rest of the open."""
        pid = os.getpid()
        name = f"{self._own_temp()}/{pid}-{next(self._part_numbers)}.part"
        try:
            return os.open(name, NEW_FILE_FLAGS, 0o600), name
        except FileNotFoundError:  # the temp folder is made on first use
            self.temp_dir()
        except FileExistsError:  # left by an earlier process that had this pid
            pass
        return tempfile.mkstemp(suffix=".part", prefix=f"{pid}-", dir=self._own_temp())

    def put(
        self, temp_path: str | os.PathLike[str], key: str, content_type: str | None = None
    ) -> None:
        # Strings, not Paths: this runs once per image on the engine's event loop.
        target = f"{self._root}/{check_key(key)}"
        folder = target.rpartition("/")[0]
        if folder not in self._made_folders:
            os.makedirs(folder, exist_ok=True)
            if len(self._made_folders) >= MADE_FOLDERS_KEPT:
                self._made_folders.clear()
            self._made_folders.add(folder)
        try:
            try:
                os.replace(temp_path, target)
            except FileNotFoundError:
                if not os.path.exists(temp_path):
                    raise
                os.makedirs(folder, exist_ok=True)  # removed since we made it
                os.replace(temp_path, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # temp_path is on another filesystem: copy next to the target first, then rename.
            self._copy_then_replace(Path(temp_path), Path(target))

    def _copy_then_replace(self, source: Path, target: Path) -> None:
        fd, staging = tempfile.mkstemp(
            prefix=f"{os.getpid()}-", suffix=".part", dir=self.temp_dir()
        )
        try:
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                shutil.copyfileobj(src, out, DEFAULT_CHUNK_SIZE)
            os.replace(staging, target)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise
        source.unlink(missing_ok=True)

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with `prefix`; return how many files went."""
        check_prefix(prefix)
        if prefix.endswith("/"):
            candidates = [self.root / prefix.rstrip("/")]
        else:
            parent = (self.root / prefix).parent
            stem = prefix.rsplit("/", 1)[-1]
            candidates = sorted(parent.glob(f"{glob_escape(stem)}*")) if parent.is_dir() else []
        removed = 0
        for candidate in candidates:
            if candidate.is_symlink() or candidate.is_file():
                candidate.unlink(missing_ok=True)
                removed += 1
            elif candidate.is_dir():
                removed += sum(len(files) for _, _, files in os.walk(candidate))
                shutil.rmtree(candidate, ignore_errors=True)
        return removed

    def clean_temp(self, live_pids: set[int] | None = None) -> int:
        return clean_temp_dir(self.root / TEMP_DIR_NAME, live_pids)

    # -- reading -----------------------------------------------------------------------------

    def open(self, key: str) -> BinaryIO:
        return open(self.path(key), "rb")

    def iter_bytes(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        # Opened now, so a missing key raises FileNotFoundError here, not on the first next().
        return iter_stream(open(self.path(key), "rb"), chunk_size)

    def read_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    # -- health ------------------------------------------------------------------------------

    def check(self) -> str:
        """Create the root, publish and read back a probe file; describe the store."""
        probe_target = self.root / f".check-{os.getpid()}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            temp = self.temp_dir()
            fd, probe = tempfile.mkstemp(prefix=f"{os.getpid()}-", suffix=".part", dir=temp)
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(b"probe")
                os.replace(probe, probe_target)
            finally:
                Path(probe).unlink(missing_ok=True)
            if probe_target.read_bytes() != b"probe":
                raise StorageError(f"MEDIA_ROOT {self.root} returned different bytes than written")
            probe_target.unlink()
            free = shutil.disk_usage(self.root).free
        except StorageError:
            raise
        except OSError as exc:
            with contextlib.suppress(OSError):
                probe_target.unlink(missing_ok=True)
            raise StorageError(
                f"MEDIA_ROOT {self.root} is not writable: {exc.strerror or exc}"
            ) from exc
        return f"local directory {self.root} ({free / 1e9:.1f} GB free)"

    def presigned_url(self, key: str, filename: str, expires: int = 300) -> str | None:
        check_key(key)
        return None


def glob_escape(text: str) -> str:
    """Escape glob metacharacters (keys cannot hold them, but be exact anyway)."""
    return "".join(f"[{c}]" if c in "*?[]" else c for c in text)
