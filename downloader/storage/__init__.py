"""Where finished images live: a local directory or an S3 bucket, behind one interface.

Usage: `make_storage(settings).put(part_file, image_key(job, product_id, 1, "jpg"))`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from downloader.settings import Settings
from downloader.storage.base import (
    DEFAULT_CHUNK_SIZE,
    Storage,
    StorageError,
    check_key,
    check_prefix,
    content_disposition,
    image_key,
    iter_stream,
    output_key,
)
from downloader.storage.local import LocalStorage

if TYPE_CHECKING:
    from downloader.storage.s3 import DEFAULT_MULTIPART_THRESHOLD, S3Storage


def __getattr__(name: str) -> Any:
    # boto3 costs ~35 MB and half a second: import it only where S3 is used
    if name in ("S3Storage", "DEFAULT_MULTIPART_THRESHOLD"):
        from downloader.storage import s3

        return getattr(s3, name)
    raise AttributeError(name)


__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MULTIPART_THRESHOLD",
    "LocalStorage",
    "S3Storage",
    "Storage",
    "StorageError",
    "check_key",
    "check_prefix",
    "content_disposition",
    "image_key",
    "iter_stream",
    "make_storage",
    "output_key",
]


def make_storage(settings: Settings, *, multipart_threshold: int | None = None) -> Storage:
    """The backend MEDIA_BACKEND names, configured from the settings."""
    if settings.media_backend == "s3":
        from downloader.storage.s3 import DEFAULT_MULTIPART_THRESHOLD, S3Storage

        if not settings.aws_storage_bucket_name:
            raise StorageError("AWS_STORAGE_BUCKET_NAME is required when MEDIA_BACKEND=s3")
        return S3Storage(
            settings.aws_storage_bucket_name,
            region=settings.aws_s3_region_name,
            endpoint_url=settings.aws_s3_endpoint_url,
            access_key_id=settings.aws_access_key_id,
            secret_access_key=settings.aws_secret_access_key,
            multipart_threshold=multipart_threshold or DEFAULT_MULTIPART_THRESHOLD,
        )
    return LocalStorage(settings.media_root)
