"""Media objects in an S3 bucket (AWS or an S3-compatible store such as MinIO)."""

from __future__ import annotations

import io
import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from downloader.storage.base import (
    DEFAULT_CHUNK_SIZE,
    StorageError,
    check_key,
    check_prefix,
    clean_temp_dir,
    content_disposition,
)

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

DEFAULT_MULTIPART_THRESHOLD = 8 * 1024 * 1024
MIN_PART_SIZE = 5 * 1024 * 1024  # S3's smallest allowed part (except the last one)
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}


def _client_config(
    *, endpoint_url: str | None, region: str, attempts: int, connect: float
) -> Config:
    return Config(
        region_name=region,
        signature_version="s3v4",
        connect_timeout=connect,
        read_timeout=60,
        max_pool_connections=64,
        tcp_keepalive=True,
        retries={"mode": "standard", "max_attempts": attempts},
        s3={"addressing_style": "path"} if endpoint_url else {},
        # S3-compatible stores (MinIO, moto, Ceph...) reject or mishandle the default
        # CRC checksums newer botocore adds to every request; only send them when required.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )


class S3Storage:
    """Objects are `s3://<bucket>/<key>`; `.part` files live in a local temp directory."""

    name = "s3"

    def __init__(
        self,
        bucket: str,
        *,
        region: str = "us-east-1",
        endpoint_url: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
    ) -> None:
        if not bucket:
            raise StorageError("AWS_STORAGE_BUCKET_NAME is required when MEDIA_BACKEND=s3")
        if multipart_threshold < 1:
            raise ValueError("multipart_threshold must be positive")
        self.bucket = bucket
        self.region = region
        self.endpoint_url = endpoint_url or None
        self.multipart_threshold = multipart_threshold
        # Credentials from the settings when given, else boto3's default chain
        # (environment, shared config, container/instance role).
        session = boto3.session.Session(
            aws_access_key_id=access_key_id or None,
            aws_secret_access_key=secret_access_key or None,
            region_name=region,
        )
        self._client: S3Client = session.client(
            "s3",
            endpoint_url=self.endpoint_url,
            config=_client_config(
                endpoint_url=self.endpoint_url, region=region, attempts=5, connect=5
            ),
        )
        # The health check should answer quickly, not after a full retry schedule.
        self._check_client: S3Client = session.client(
            "s3",
            endpoint_url=self.endpoint_url,
            config=_client_config(
                endpoint_url=self.endpoint_url, region=region, attempts=2, connect=3
            ),
        )
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=max(multipart_threshold, MIN_PART_SIZE),
            max_concurrency=4,
        )

    def __repr__(self) -> str:
        where = self.endpoint_url or "AWS"
        return f"S3Storage(bucket={self.bucket!r}, endpoint={where!r})"

    @property
    def client(self) -> S3Client:
        return self._client

    def describe(self) -> str:
        return f"S3 bucket {self.bucket} at {self.endpoint_url or 'AWS'} ({self.region})"

    # -- errors ------------------------------------------------------------------------------

    def _error(self, action: str, key: str | None, exc: Exception) -> Exception:
        """Map a boto error to FileNotFoundError (missing key) or a readable StorageError."""
        where = f"s3://{self.bucket}/{key}" if key else f"bucket {self.bucket}"
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if key is not None and (code in _NOT_FOUND_CODES or (status == 404 and not code)):
                return FileNotFoundError(f"no such object: {where}")
            message = error.get("Message") or code or str(exc)
            return StorageError(f"S3 {action} on {where} failed: {code or status}: {message}")
        return StorageError(f"S3 {action} on {where} failed: {exc}")

    # -- writing -----------------------------------------------------------------------------

    def temp_dir(self) -> Path:
        directory = Path(tempfile.gettempdir()) / f"bid-{self.bucket}"
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def put_bytes(self, data: bytes, key: str, content_type: str | None = None) -> None:
        """Upload `data` as one object (the fetcher hands over bodies up to 256 KiB this way,
        well under the multipart threshold): no temp file on local disk."""
        check_key(key)
        extra: dict[str, Any] = {"ContentType": content_type} if content_type else {}
        try:
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data, **extra)
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            raise self._error("upload", key, exc) from exc

    def put(self, temp_path: Path, key: str, content_type: str | None = None) -> None:
        """Upload (multipart above the threshold), then delete the temp file.

        S3 only shows an object once its upload completed, so readers never see half a file.
        On failure the temp file is left in place and StorageError is raised.
        """
        check_key(key)
        path = Path(temp_path)
        extra: dict[str, Any] = {"ContentType": content_type} if content_type else {}
        try:
            if path.stat().st_size >= self.multipart_threshold:
                self._client.upload_file(
                    str(path), self.bucket, key, ExtraArgs=extra or None, Config=self._transfer
                )
            else:
                with open(path, "rb") as body:
                    self._client.put_object(Bucket=self.bucket, Key=key, Body=body, **extra)
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            raise self._error("upload", key, exc) from exc
        path.unlink(missing_ok=True)

    def delete(self, key: str) -> None:
        check_key(key)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            error = self._error("delete", key, exc)
            if not isinstance(error, FileNotFoundError):
                raise error from exc

    def delete_prefix(self, prefix: str) -> int:
        check_prefix(prefix)
        removed = 0
        try:
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                objects: list[ObjectIdentifierTypeDef] = [
                    {"Key": item["Key"]} for item in page.get("Contents", [])
                ]
                if not objects:
                    continue
                response = self._client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": objects, "Quiet": True},
                )
                errors = response.get("Errors", [])
                if errors:
                    first = errors[0]
                    raise StorageError(
                        f"S3 delete of {len(errors)} object(s) under s3://{self.bucket}/{prefix}"
                        f" failed, e.g. {first.get('Key')}: {first.get('Code')}"
                        f" {first.get('Message', '')}".rstrip()
                    )
                removed += len(objects)
        except (ClientError, BotoCoreError) as exc:
            raise self._error("delete", prefix, exc) from exc
        return removed

    def clean_temp(self, live_pids: set[int] | None = None) -> int:
        return clean_temp_dir(Path(tempfile.gettempdir()) / f"bid-{self.bucket}", live_pids)

    # -- reading -----------------------------------------------------------------------------

    def _get_body(self, key: str) -> Any:
        check_key(key)
        try:
            return self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except (ClientError, BotoCoreError) as exc:
            raise self._error("download", key, exc) from exc

    def open(self, key: str) -> BinaryIO:
        body = self._get_body(key)
        return cast(BinaryIO, io.BufferedReader(_BodyReader(body), DEFAULT_CHUNK_SIZE))

    def iter_bytes(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        # The request is made now, so a missing key raises FileNotFoundError here.
        return _iter_body(self._get_body(key), chunk_size)

    def read_bytes(self, key: str) -> bytes:
        body = self._get_body(key)
        try:
            return cast(bytes, body.read())
        finally:
            body.close()

    def _head(self, key: str) -> dict[str, Any]:
        check_key(key)
        try:
            return cast(dict[str, Any], self._client.head_object(Bucket=self.bucket, Key=key))
        except (ClientError, BotoCoreError) as exc:
            raise self._error("head", key, exc) from exc

    def size(self, key: str) -> int:
        return int(self._head(key)["ContentLength"])

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except FileNotFoundError:
            return False
        return True

    # -- health and links --------------------------------------------------------------------

    def check(self) -> str:
        """Reach the bucket and write + delete a probe object; raise StorageError if not."""
        client = self._check_client
        probe = f"_healthcheck/{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404:
                raise StorageError(
                    f"S3 bucket {self.bucket!r} does not exist at {self.endpoint_url or 'AWS'}"
                ) from exc
            if status == 403:
                raise StorageError(
                    f"S3 access to bucket {self.bucket!r} denied; check AWS_ACCESS_KEY_ID,"
                    " AWS_SECRET_ACCESS_KEY and the bucket policy"
                ) from exc
            raise self._error("check", None, exc) from exc
        except BotoCoreError as exc:
            raise StorageError(
                f"S3 endpoint {self.endpoint_url or 'AWS'} for bucket {self.bucket!r}"
                f" is unreachable: {exc}"
            ) from exc
        try:
            client.put_object(Bucket=self.bucket, Key=probe, Body=b"probe")
            client.delete_object(Bucket=self.bucket, Key=probe)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(
                f"S3 bucket {self.bucket!r} is reachable but not writable: {exc}"
            ) from exc
        return self.describe()

    def presigned_url(self, key: str, filename: str, expires: int = 300) -> str | None:
        """A GET link that downloads as `filename` (attachment) for `expires` seconds."""
        check_key(key)
        if not 1 <= expires <= MAX_PRESIGN_SECONDS:
            raise ValueError(f"expires must be between 1 and {MAX_PRESIGN_SECONDS} seconds")
        try:
            return self._client.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.bucket,
                    "Key": key,
                    "ResponseContentDisposition": content_disposition(filename),
                },
                ExpiresIn=expires,
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._error("presign", key, exc) from exc


class _BodyReader(io.RawIOBase):
    """A raw, readable file object over a botocore StreamingBody."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._body.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


def _iter_body(body: Any, chunk_size: int) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(chunk_size)
    finally:
        body.close()
