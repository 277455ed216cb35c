"""S3 backend specifics against moto's server mode on loopback (real HTTP, real boto3)."""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from downloader.settings import load_settings
from downloader.storage import S3Storage, StorageError, image_key, make_storage

pytest_plugins = ["tests.support.s3server"]  # fixtures: s3_server, s3_overrides, ...

MIB = 1024 * 1024


def s3_storage(overrides: dict[str, Any], **kwargs: Any) -> S3Storage:
    storage = make_storage(load_settings(**overrides), **kwargs)
    assert isinstance(storage, S3Storage)
    return storage


def part_file(storage: S3Storage, data: bytes, name: str = "x") -> Path:
    temp = storage.temp_dir() / f"{os.getpid()}-{name}.part"
    temp.write_bytes(data)
    return temp


def closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_client_configuration(s3_overrides: dict[str, Any]) -> None:
    storage = s3_storage(s3_overrides)
    config: Any = storage.client.meta.config
    assert config.request_checksum_calculation == "when_required"
    assert config.response_checksum_validation == "when_required"
    assert config.s3 == {"addressing_style": "path"}
    assert config.retries["mode"] == "standard"
    assert storage.client.meta.endpoint_url == s3_overrides["aws_s3_endpoint_url"]
    assert storage.client.meta.region_name == "us-east-1"
    assert storage.temp_dir() == Path(tempfile.gettempdir()) / f"bid-{storage.bucket}"


def test_small_put_is_a_single_object_with_content_type(
    s3_overrides: dict[str, Any], s3_client: Any
) -> None:
    storage = s3_storage(s3_overrides)
    key = image_key("job1", 1, 1, "png")
    temp = part_file(storage, b"\x89PNG small")
    storage.put(temp, key, "image/png")
    assert not temp.exists()
    head = s3_client.head_object(Bucket=storage.bucket, Key=key)
    assert head["ContentType"] == "image/png"
    assert "-" not in head["ETag"]
    assert storage.read_bytes(key) == b"\x89PNG small"


def test_put_bytes_uploads_one_object_with_content_type_and_no_local_file(
    s3_overrides: dict[str, Any], s3_client: Any
) -> None:
    storage = s3_storage(s3_overrides)
    key = image_key("job1", 1, 2, "webp")
    before = set(storage.temp_dir().iterdir())
    storage.put_bytes(b"RIFF....WEBP bytes", key, "image/webp")
    head = s3_client.head_object(Bucket=storage.bucket, Key=key)
    assert head["ContentType"] == "image/webp"
    assert storage.read_bytes(key) == b"RIFF....WEBP bytes"
    assert set(storage.temp_dir().iterdir()) == before


def test_large_put_uses_multipart(s3_overrides: dict[str, Any], s3_client: Any) -> None:
    storage = s3_storage(s3_overrides, multipart_threshold=5 * MIB)
    data = os.urandom(12 * MIB + 123)
    key = image_key("job1", 1, 2, "jpg")
    temp = part_file(storage, data)
    storage.put(temp, key, "image/jpeg")
    assert not temp.exists()
    head = s3_client.head_object(Bucket=storage.bucket, Key=key)
    assert head["ETag"].strip('"').endswith("-3"), head["ETag"]  # 5 + 5 + 2 MiB parts
    assert head["ContentType"] == "image/jpeg"
    assert storage.size(key) == len(data)
    digest = hashlib.sha256()
    for chunk in storage.iter_bytes(key):
        digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    with storage.open(key) as handle:  # a stream over the HTTP body (not seekable)
        assert handle.read(1000) == data[:1000]
        assert handle.read(5 * MIB) == data[1000 : 1000 + 5 * MIB]
    # No multipart upload is left dangling.
    uploads = s3_client.list_multipart_uploads(Bucket=storage.bucket)
    assert not uploads.get("Uploads")


def test_multipart_object_is_invisible_until_complete(
    s3_overrides: dict[str, Any], s3_client: Any
) -> None:
    storage = s3_storage(s3_overrides, multipart_threshold=5 * MIB)
    data = os.urandom(16 * MIB)
    key = image_key("job1", 1, 3, "jpg")
    temp = part_file(storage, data)
    sizes: list[int] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                sizes.append(s3_client.head_object(Bucket=storage.bucket, Key=key)["ContentLength"])
            except s3_client.exceptions.ClientError:
                sizes.append(-1)

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(poll)
        storage.put(temp, key)
        stop.set()
        future.result()
    assert set(sizes) <= {-1, len(data)}
    assert storage.size(key) == len(data)


def test_failed_upload_keeps_the_temp_file(s3_overrides: dict[str, Any]) -> None:
    storage = s3_storage({**s3_overrides, "aws_storage_bucket_name": "no-such-bucket-here"})
    temp = part_file(storage, b"data")
    with pytest.raises(StorageError, match="no-such-bucket-here"):
        storage.put(temp, image_key("job1", 1, 1, "jpg"))
    assert temp.exists()
    temp.unlink()


def test_presigned_url_downloads_as_attachment(s3_overrides: dict[str, Any]) -> None:
    storage = s3_storage(s3_overrides)
    key = image_key("job1", 4, 1, "webp")
    storage.put(part_file(storage, b"RIFF....WEBP"), key, "image/webp")
    url = storage.presigned_url(key, "SKU-4_1.webp", expires=60)
    assert url is not None and url.startswith(s3_overrides["aws_s3_endpoint_url"])
    assert "X-Amz-Expires=60" in url
    with httpx.Client(trust_env=False) as http:
        response = http.get(url)
        assert response.status_code == 200
        assert response.content == b"RIFF....WEBP"
        assert response.headers["content-disposition"] == 'attachment; filename="SKU-4_1.webp"'

        url = storage.presigned_url(key, 'we"ird ñame.webp')
        assert url is not None
        response = http.get(url)
        assert response.status_code == 200
        disposition = response.headers["content-disposition"]
        assert disposition.startswith('attachment; filename="we_ird name.webp"')
        assert "filename*=UTF-8''we%22ird%20%C3%B1ame.webp" in disposition
    with pytest.raises(ValueError):
        storage.presigned_url(key, "x", expires=0)


@pytest.mark.slow
def test_delete_prefix_pages_past_1000_objects(
    s3_overrides: dict[str, Any], s3_client: Any
) -> None:
    storage = s3_storage(s3_overrides)
    keys = [image_key("big", n // 100, n % 100 + 1, "jpg") for n in range(1105)]
    with ThreadPoolExecutor(16) as pool:
        list(
            pool.map(lambda k: s3_client.put_object(Bucket=storage.bucket, Key=k, Body=b"x"), keys)
        )
    storage.put(part_file(storage, b"keep"), image_key("other", 1, 1, "jpg"))
    assert storage.delete_prefix("jobs/big/") == 1105
    remaining = s3_client.list_objects_v2(Bucket=storage.bucket).get("Contents", [])
    assert [item["Key"] for item in remaining] == [image_key("other", 1, 1, "jpg")]


def test_check_reports_a_missing_bucket(s3_overrides: dict[str, Any]) -> None:
    storage = s3_storage({**s3_overrides, "aws_storage_bucket_name": "absent-bucket"})
    with pytest.raises(StorageError, match="'absent-bucket' does not exist"):
        storage.check()


def test_check_reports_an_unreachable_endpoint(s3_overrides: dict[str, Any]) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    storage = s3_storage({**s3_overrides, "aws_s3_endpoint_url": endpoint})
    with pytest.raises(StorageError, match="unreachable"):
        storage.check()


def test_check_leaves_no_probe_behind(s3_overrides: dict[str, Any], s3_client: Any) -> None:
    storage = s3_storage(s3_overrides)
    assert storage.check() == (
        f"S3 bucket {storage.bucket} at {s3_overrides['aws_s3_endpoint_url']} (us-east-1)"
    )
    assert not s3_client.list_objects_v2(Bucket=storage.bucket).get("Contents")
