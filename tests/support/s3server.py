"""A real S3 HTTP endpoint on loopback (moto's server mode) for tests.

Register the fixtures once per test module (or once in tests/conftest.py):

    pytest_plugins = ["tests.support.s3server"]

    def test_something(s3_overrides):
        settings = load_settings(**s3_overrides, database_url=...)

(Importing the fixture functions into a module also works, but ruff then reports F811 on
every test that takes them as arguments.)

`s3_server` (session scope) is the endpoint URL, e.g. "http://127.0.0.1:45123".
`s3_overrides` (per test) creates a fresh, empty bucket and yields the `load_settings`
keyword arguments that point at it (media_backend, bucket, endpoint, dummy credentials).
`s3_bucket` is that bucket's name; `s3_client` a boto3 client for the server (to inspect
objects directly). The bucket and its local temp dir are removed after the test.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

# Never let boto3 look for credentials on an instance metadata endpoint (off-loopback).
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

ACCESS_KEY = "testing-access-key"
SECRET_KEY = "testing-secret-key"
REGION = "us-east-1"


def make_client(endpoint_url: str) -> Any:
    """A plain boto3 S3 client for the moto endpoint."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            proxies={},
        ),
    )


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Start moto's S3 server on 127.0.0.1 (a free port); yield its endpoint URL."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    assert host == "127.0.0.1"
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_client(s3_server: str) -> Any:
    return make_client(s3_server)


@pytest.fixture
def s3_bucket(s3_client: Any) -> Iterator[str]:
    """A fresh bucket, emptied and removed after the test."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        paginator = s3_client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=name):
            for item in page.get("Contents", []):
                s3_client.delete_object(Bucket=name, Key=item["Key"])
        s3_client.delete_bucket(Bucket=name)
        shutil.rmtree(os.path.join(tempfile.gettempdir(), f"bid-{name}"), ignore_errors=True)


@pytest.fixture
def s3_overrides(s3_server: str, s3_bucket: str) -> dict[str, Any]:
    """`load_settings(**s3_overrides)` gives settings for the moto bucket."""
    return {
        "media_backend": "s3",
        "aws_storage_bucket_name": s3_bucket,
        "aws_s3_endpoint_url": s3_server,
        "aws_s3_region_name": REGION,
        "aws_access_key_id": ACCESS_KEY,
        "aws_secret_access_key": SECRET_KEY,
    }
