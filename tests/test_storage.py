"""Storage contract, run against both backends: a local directory and moto's S3 server."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from downloader.settings import load_settings
from downloader.storage import (
    LocalStorage,
    S3Storage,
    Storage,
    StorageError,
    check_key,
    content_disposition,
    image_key,
    make_storage,
)

pytest_plugins = ["tests.support.s3server"]  # fixtures: s3_server, s3_overrides, ...

BAD_KEYS = [
    "",
    "/etc/passwd",
    "../outside.jpg",
    "jobs/../../outside.jpg",
    "jobs/a/..",
    "jobs\\a\\1.jpg",
    "jobs//1.jpg",
    "jobs/./1.jpg",
    ".tmp/123-x.part",
    "jobs/a b/1.jpg",
    "jobs/\x00/1.jpg",
    "jobs/é/1.jpg",
]


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return make_storage(load_settings(media_root=str(tmp_path / "media")))
    overrides = request.getfixturevalue("s3_overrides")
    return make_storage(load_settings(**overrides))


def publish(storage: Storage, key: str, data: bytes, content_type: str | None = None) -> Path:
    """Write `data` the way the fetcher does (a .part file in temp_dir) and put it."""
    temp = storage.temp_dir() / f"{os.getpid()}-{uuid.uuid4().hex}.part"
    temp.write_bytes(data)
    storage.put(temp, key, content_type)
    return temp


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(proc.stdout)


# -- both backends ------------------------------------------------------------------------


def test_put_then_read_every_way(storage: Storage) -> None:
    data = os.urandom(300_000)
    key = image_key("job1", 7, 1, "jpg")
    assert not storage.exists(key)
    temp = publish(storage, key, data, "image/jpeg")
    assert not temp.exists(), "put must consume the temp file"
    assert storage.exists(key)
    assert storage.size(key) == len(data)
    assert storage.read_bytes(key) == data
    with storage.open(key) as handle:
        assert handle.read(10) == data[:10]
        assert handle.read() == data[10:]
    chunks = list(storage.iter_bytes(key, chunk_size=65536))
    assert b"".join(chunks) == data
    assert max(len(chunk) for chunk in chunks) <= 65536
    assert len(chunks) >= 4


def test_put_bytes_then_read_and_replace(storage: Storage) -> None:
    data = os.urandom(200_000)
    key = image_key("job1", 8, 1, "webp")
    storage.put_bytes(data, key, "image/webp")
    assert storage.read_bytes(key) == data and storage.size(key) == len(data)
    storage.put_bytes(b"second", key, "image/webp")
    assert storage.read_bytes(key) == b"second"
    assert [p for p in storage.temp_dir().iterdir() if p.name.startswith(f"{os.getpid()}-")] == []


def test_put_is_idempotent_and_replaces(storage: Storage) -> None:
    key = image_key("job1", 1, 2, "png")
    publish(storage, key, b"first version")
    publish(storage, key, b"second")
    publish(storage, key, b"second")
    assert storage.read_bytes(key) == b"second"
    assert storage.size(key) == len(b"second")
    assert storage.delete_prefix("jobs/job1/") == 1


def test_empty_file(storage: Storage) -> None:
    key = image_key("job1", 1, 3, "gif")
    publish(storage, key, b"")
    assert storage.exists(key)
    assert storage.size(key) == 0
    assert storage.read_bytes(key) == b""
    assert list(storage.iter_bytes(key)) == []


def test_missing_key_raises_file_not_found(storage: Storage) -> None:
    key = image_key("nojob", 1, 1, "jpg")
    assert storage.exists(key) is False
    with pytest.raises(FileNotFoundError):
        storage.size(key)
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(key)
    with pytest.raises(FileNotFoundError):
        storage.open(key)
    with pytest.raises(FileNotFoundError):
        storage.iter_bytes(key)  # raised at the call, before iterating
    storage.delete(key)  # missing is fine


def test_delete_and_delete_prefix(storage: Storage) -> None:
    for product in (1, 2):
        for position in (1, 2, 3):
            publish(storage, image_key("jobA", product, position, "jpg"), b"a")
    publish(storage, image_key("jobB", 1, 1, "jpg"), b"b")
    publish(storage, image_key("jobAB", 1, 1, "jpg"), b"ab")

    storage.delete(image_key("jobA", 1, 1, "jpg"))
    assert not storage.exists(image_key("jobA", 1, 1, "jpg"))
    assert storage.delete_prefix("jobs/jobA/2/") == 3
    assert storage.delete_prefix("jobs/jobA/") == 2
    assert storage.delete_prefix("jobs/jobA/") == 0
    # A prefix with a trailing slash is a folder: jobAB is not part of jobA.
    assert storage.exists(image_key("jobAB", 1, 1, "jpg"))
    assert storage.exists(image_key("jobB", 1, 1, "jpg"))
    # Without the slash it is a plain string prefix, like S3.
    assert storage.delete_prefix("jobs/jobA") == 1
    assert storage.exists(image_key("jobB", 1, 1, "jpg"))
    with pytest.raises(ValueError):
        storage.delete_prefix("")
    with pytest.raises(ValueError):
        storage.delete_prefix("../")


@pytest.mark.parametrize("key", BAD_KEYS)
def test_unsafe_keys_are_refused(storage: Storage, key: str) -> None:
    temp = storage.temp_dir() / f"{os.getpid()}-unsafe.part"
    temp.write_bytes(b"x")
    with pytest.raises(ValueError):
        storage.put(temp, key)
    assert temp.exists(), "a refused put must not consume the temp file"
    temp.unlink()
    for call in (storage.open, storage.read_bytes, storage.size, storage.exists, storage.delete):
        with pytest.raises(ValueError):
            call(key)
    with pytest.raises(ValueError):
        storage.iter_bytes(key)
    with pytest.raises(ValueError):
        storage.presigned_url(key, "x.jpg")


def test_clean_temp_removes_only_dead_processes_files(storage: Storage) -> None:
    temp_dir = storage.temp_dir()
    gone = dead_pid()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead_file = temp_dir / f"{gone}-abc.part"
        live_file = temp_dir / f"{sleeper.pid}-def.part"
        own_file = temp_dir / f"{os.getpid()}-ghi.part"
        other_file = temp_dir / "notes.txt"
        for path in (dead_file, live_file, own_file, other_file):
            path.write_bytes(b"partial")
        assert storage.clean_temp() == 1
        assert not dead_file.exists()
        assert live_file.exists() and own_file.exists() and other_file.exists()

        # With an explicit set, only those pids (and this process) count as alive.
        assert storage.clean_temp(live_pids=set()) == 1
        assert not live_file.exists()
        assert own_file.exists() and other_file.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
        for path in temp_dir.iterdir():
            path.unlink()


def test_each_process_has_its_own_temp_folder_and_dead_ones_are_removed(tmp_path: Path) -> None:
    local = LocalStorage(tmp_path / "media")
    own = local.temp_dir()
    assert own.name == str(os.getpid()) and own.parent.name == ".tmp"
    gone = dead_pid()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead_folder = own.parent / str(gone)
        live_folder = own.parent / str(sleeper.pid)
        for folder in (dead_folder, live_folder):
            folder.mkdir()
            (folder / f"{folder.name}-a.part").write_bytes(b"partial")
        (own / f"{os.getpid()}-b.part").write_bytes(b"partial")
        assert local.clean_temp() == 1
        assert not dead_folder.exists(), "a dead process's emptied folder goes too"
        assert (live_folder / f"{sleeper.pid}-a.part").exists()
        assert (own / f"{os.getpid()}-b.part").exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_check_describes_a_healthy_store(storage: Storage) -> None:
    description = storage.check()
    assert isinstance(description, str) and "\n" not in description
    assert storage.name in ("local", "s3")


# -- local specifics ------------------------------------------------------------------------


def test_local_layout_and_same_filesystem(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "media")
    assert storage.name == "local"
    assert storage.temp_dir() == tmp_path / "media" / ".tmp" / str(os.getpid())
    key = image_key("job1", 3, 4, "webp")
    temp = storage.temp_dir() / f"{os.getpid()}-x.part"
    temp.write_bytes(b"webp bytes")
    inode = temp.stat().st_ino
    assert temp.stat().st_dev == (tmp_path / "media").stat().st_dev
    storage.put(temp, key)
    target = tmp_path / "media" / "jobs" / "job1" / "3" / "4.webp"
    assert target.read_bytes() == b"webp bytes"
    # Published by rename (the very same inode), not by copying into place.
    assert target.stat().st_ino == inode
    assert storage.presigned_url(key, "a.webp") is None


def test_local_put_is_atomic_for_a_concurrent_reader(tmp_path: Path) -> None:
    """A reader polling the key only ever sees no file or one complete version."""
    storage = LocalStorage(tmp_path / "media")
    key = image_key("job1", 1, 1, "jpg")
    path = storage.path(key)
    versions = [bytes([n]) * (4 * 1024 * 1024) for n in range(1, 9)]
    digests = {hashlib.sha256(v).hexdigest() for v in versions}
    seen: list[str] = []
    bad: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                seen.append("absent")
                continue
            digest = hashlib.sha256(data).hexdigest()
            seen.append(digest)
            if digest not in digests:
                bad.append(f"partial read of {len(data)} bytes")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(3):
            for version in versions:
                temp = storage.temp_dir() / f"{os.getpid()}-{uuid.uuid4().hex}.part"
                # Written slowly in pieces, as the fetcher does; the key path is untouched.
                with open(temp, "wb") as out:
                    for offset in range(0, len(version), 256 * 1024):
                        out.write(version[offset : offset + 256 * 1024])
                        out.flush()
                storage.put(temp, key)
    finally:
        stop.set()
        thread.join()
    assert not bad, bad[:3]
    assert any(item in digests for item in seen)
    assert not list(storage.temp_dir().iterdir())


def test_local_put_bytes_that_fails_leaves_no_part_file(tmp_path: Path) -> None:
    local = LocalStorage(tmp_path / "media")
    key = image_key("job1", 1, 1, "jpg")
    blocker = local.path(key).parent
    blocker.parent.mkdir(parents=True)
    blocker.write_bytes(b"a file where the product's folder should be")
    with pytest.raises(OSError):
        local.put_bytes(b"image bytes", key)
    assert list(local.temp_dir().iterdir()) == []
    assert not local.exists(key)


def test_local_put_from_another_directory(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "media")
    outside = tmp_path / "elsewhere" / "123-file.part"
    outside.parent.mkdir()
    outside.write_bytes(b"data")
    storage.put(outside, "exports/job1/failed.csv")
    assert storage.read_bytes("exports/job1/failed.csv") == b"data"
    assert not outside.exists()


def test_local_check_fails_readably_when_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    storage = LocalStorage(blocker / "media")
    with pytest.raises(StorageError, match=r"MEDIA_ROOT .* is not writable"):
        storage.check()


def test_local_check_leaves_nothing_behind(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "media")
    assert "local directory" in storage.check()
    assert [p.name for p in (tmp_path / "media").iterdir()] == [".tmp"]
    assert not list(storage.temp_dir().iterdir())


def test_keys_never_escape_the_media_root(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "media")
    for key in BAD_KEYS:
        with pytest.raises(ValueError):
            storage.path(key)
    assert storage.path("jobs/x/1/1.jpg").is_relative_to(tmp_path / "media")


# -- helpers --------------------------------------------------------------------------------


def test_image_key() -> None:
    assert image_key("3f2a-9b", 12, 1, "jpg") == "jobs/3f2a-9b/12/1.jpg"
    assert check_key(image_key("job", 0, 99, "avif")) == "jobs/job/0/99.avif"
    for bad in (
        ("a/b", 1, 1, "jpg"),
        ("..", 1, 1, "jpg"),
        ("job", -1, 1, "jpg"),
        ("job", 1, 0, "jpg"),
        ("job", 1, 1, "j/g"),
        ("job", 1, 1, ""),
    ):
        with pytest.raises(ValueError):
            image_key(*bad)


def test_make_storage_picks_the_backend(tmp_path: Path) -> None:
    local = make_storage(load_settings(media_backend="local", media_root=str(tmp_path)))
    assert isinstance(local, LocalStorage) and local.root == tmp_path
    with pytest.raises(StorageError, match="AWS_STORAGE_BUCKET_NAME"):
        make_storage(load_settings(media_backend="s3", aws_storage_bucket_name=None))
    s3 = make_storage(
        load_settings(
            media_backend="s3",
            aws_storage_bucket_name="some-bucket",
            aws_s3_endpoint_url="http://127.0.0.1:9",
            aws_access_key_id="k",
            aws_secret_access_key="s",
        )
    )
    assert isinstance(s3, S3Storage)
    assert isinstance(s3, Storage) and isinstance(local, Storage)


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("P1_1.jpg", 'attachment; filename="P1_1.jpg"'),
        ('evil".jpg', "attachment; filename=\"evil_.jpg\"; filename*=UTF-8''evil%22.jpg"),
        ("a\r\nb.zip", 'attachment; filename="ab.zip"'),
        ("../x.zip", 'attachment; filename=".._x.zip"'),
        ("café.zip", "attachment; filename=\"cafe.zip\"; filename*=UTF-8''caf%C3%A9.zip"),
        ("", 'attachment; filename="download"'),
    ],
)
def test_content_disposition(filename: str, expected: str) -> None:
    assert content_disposition(filename) == expected


def test_local_put_recreates_a_folder_removed_after_it_was_made(tmp_path: Path) -> None:
    from downloader.storage.local import LocalStorage

    storage = LocalStorage(tmp_path / "media")
    first = storage.temp_dir() / f"{os.getpid()}-a.part"
    first.write_bytes(b"one")
    storage.put(first, "jobs/j1/1/1.jpg")
    storage.delete_prefix("jobs/j1/")  # e.g. retention removed the job's folder
    assert not (tmp_path / "media" / "jobs" / "j1").exists()
    second = storage.temp_dir() / f"{os.getpid()}-b.part"
    second.write_bytes(b"two")
    storage.put(second, "jobs/j1/1/2.jpg")
    assert storage.read_bytes("jobs/j1/1/2.jpg") == b"two"
