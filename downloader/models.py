"""SQLModel tables: Job 1—n Product 1—n Image, plus rejected input rows and live workers.

Times are float epoch seconds: portable across SQLite and PostgreSQL and cheap to compare
in lease queries. The schema is built by the Alembic migrations in downloader/migrations,
except that a brand-new SQLite file gets it straight from these classes and is stamped at
the head revision (db.py: skips importing Alembic). tests/test_db_fresh_schema.py keeps the
two in step.
"""

from __future__ import annotations

import time
import uuid
from enum import StrEnum

from sqlalchemy import BigInteger, Index, Table, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    COMPLETED = "completed"


class ImageStatus(StrEnum):
    QUEUED = "queued"
    DOWNLOADING = "downloading"
    DONE = "done"
    DUPLICATE = "duplicate"
    FAILED = "failed"
    SKIPPED = "skipped"


ACTIVE_JOB_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)
PENDING_IMAGE_STATUSES = (ImageStatus.QUEUED, ImageStatus.DOWNLOADING)
FINAL_IMAGE_STATUSES = (
    ImageStatus.DONE,
    ImageStatus.DUPLICATE,
    ImageStatus.FAILED,
    ImageStatus.SKIPPED,
)


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


class JobBase(SQLModel):
    name: str = Field(default="", max_length=200)
    source: str = Field(default="", max_length=300, description="file name or 'pasted text'")


class Job(JobBase, table=True):
    id: str = Field(default_factory=new_job_id, primary_key=True, max_length=32)
    status: str = Field(default=JobStatus.QUEUED, max_length=12, index=True)
    created_at: float = Field(default_factory=time.time, index=True)
    # The job's place in the claim order: its creation time, moved to the back of the queue
    # when failures are retried (created_at stays what the job list shows).
    queued_at: float | None = Field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    products: int = 0
    images: int = 0
    rejected_rows: int = 0
    duplicates_removed: int = 0
    created_by: str = Field(default="", max_length=64, description="session or CLI identity")
    # The signed-in person's e-mail (the CLI's --owner); None for jobs made before owners.
    owner: str | None = Field(default=None, max_length=320, index=True)
    # The job's extra request headers as JSON (jobs.request_headers); shown to the owner only.
    request_headers: str | None = Field(default=None, sa_type=Text)
    # Output options as JSON (naming template, layout, conversion, marketplace checks).
    options: str | None = Field(default=None, sa_type=Text)
    input_sha256: str = Field(
        default="", max_length=64, index=True, description="fingerprint of the queued rows"
    )
    # The webhook (HTTP API, downloader/webhooks.py): the target POSTed once when the job
    # ends, shown to the owner only, and its delivery: pending | sending | sent | failed.
    callback_url: str | None = Field(default=None, max_length=2048)
    webhook_status: str | None = Field(default=None, max_length=12)
    webhook_attempts: int | None = None
    webhook_error: str | None = Field(default=None, max_length=300)
    webhook_sent_at: float | None = None  # the last attempt's (or claim's) time


class JobPublic(JobBase):
    id: str
    status: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    products: int
    images: int
    rejected_rows: int
    duplicates_removed: int
    owner: str | None = None


class Product(SQLModel, table=True):
    __table_args__ = (
        UniqueConstraint("job_id", "number", name="uq_product_job_number"),
        Index("ix_product_job_position", "job_id", "position"),
    )
    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="job.id", max_length=32)
    number: str = Field(max_length=128)  # as typed: 1-128 characters (inputs.model)
    # The product's folder and file-name prefix in every export (downloader.naming): safe on
    # every file system, unique in its job ignoring case; None for rows written without one
    folder: str | None = Field(default=None, max_length=200)
    position: int = Field(description="order of first appearance in the input")
    image_count: int = 0


class Image(SQLModel, table=True):
    __table_args__ = (
        # counts by state (job page, CLI status) and claiming queued work
        Index("ix_image_job_status", "job_id", "status"),
        # per-product progress by aggregate SQL
        Index("ix_image_job_product_status", "job_id", "product_id", "status"),
        # ZIP and gallery order, duplicate detection within a product
        Index("ix_image_product_position", "product_id", "position"),
        # reclaiming expired leases
        Index("ix_image_status_lease", "status", "lease_expires"),
    )
    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="job.id", max_length=32)
    product_id: int = Field(foreign_key="product.id")
    position: int = Field(description="1-based order within its product after URL de-dup")
    url: str = Field(max_length=2048)
    host: str = Field(default="", max_length=300)
    source_row: int = 0
    status: str = Field(default=ImageStatus.QUEUED, max_length=12)
    attempts: int = 0
    error_code: str | None = Field(default=None, max_length=40)
    error: str | None = Field(default=None, max_length=500)
    http_status: int | None = None
    sha256: str | None = Field(default=None, max_length=64)
    # CRC-32 of the stored bytes (unsigned: needs 64 bits in PostgreSQL), so ZIPs need not
    # compute it; None for images stored before it was kept
    crc32: int | None = Field(default=None, sa_type=BigInteger)
    size_bytes: int | None = None
    format: str | None = Field(default=None, max_length=8)
    width: int | None = None
    height: int | None = None
    storage_key: str | None = Field(default=None, max_length=300)
    # What the whole-file check read: RGB, CMYK, L, P…; alpha; frames or pages; the embedded
    # ICC profile's description; the EXIF orientation (1-8; width/height stay as stored).
    color_mode: str | None = Field(default=None, max_length=16)
    has_alpha: bool | None = None
    frames: int | None = None
    icc_profile: str | None = Field(default=None, max_length=100)
    orientation: int | None = None
    # The decoded picture's 64-bit dHash stored as a signed BIGINT (near_duplicates.py), for
    # near-duplicates within a product; None unless the image was decoded (VERIFY_IMAGES=full)
    dhash: int | None = Field(default=None, sa_type=BigInteger)
    # The converted output the ZIPs hold when the job converts (None: the original is kept).
    output_format: str | None = Field(default=None, max_length=8)
    output_bytes: int | None = Field(default=None, sa_type=BigInteger)
    output_width: int | None = None
    output_height: int | None = None
    warnings: str | None = Field(default=None, sa_type=Text)  # JSON list of check warnings
    extra: str | None = Field(default=None, sa_type=Text)  # JSON: the input's other columns
    duplicate_of_id: int | None = None
    lease_owner: str | None = Field(default=None, max_length=120)
    lease_expires: float | None = None
    updated_at: float = Field(default_factory=time.time)


class RejectedRow(SQLModel, table=True):
    """An input row that was not queued: invalid, or a duplicate URL within its product."""

    __tablename__ = "rejected_row"
    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="job.id", max_length=32, index=True)
    kind: str = Field(default="rejected", max_length=12, description="rejected | duplicate")
    row: int
    reason: str = Field(max_length=300)
    product: str = Field(default="", max_length=200)
    url: str = Field(default="", max_length=200)


class Worker(SQLModel, table=True):
    """A live engine process; heartbeat_at is renewed while it runs."""

    id: str = Field(primary_key=True, max_length=120)
    hostname: str = Field(max_length=200)
    pid: int
    kind: str = Field(default="worker", max_length=20, description="embedded | worker | run")
    started_at: float = Field(default_factory=time.time)
    heartbeat_at: float = Field(default_factory=time.time)
    in_flight: int = 0
    done_total: int = 0


class ApiToken(SQLModel, table=True):
    """A personal bearer token of the HTTP API (downloader/tokens.py): only its hash is kept."""

    __tablename__ = "api_token"
    id: str = Field(default_factory=new_job_id, primary_key=True, max_length=32)
    owner: str = Field(max_length=320, index=True)
    name: str = Field(default="", max_length=100)
    token_hash: str = Field(
        max_length=64, unique=True, index=True, description="SHA-256 hex of the secret"
    )
    created_at: float = Field(default_factory=time.time)
    last_used_at: float | None = None
    expires_at: float | None = None
    revoked_at: float | None = None


class IdempotencyKey(SQLModel, table=True):
    """The job a POST /api/v1/jobs with an Idempotency-Key made (per owner, for 24 h)."""

    __tablename__ = "idempotency_key"
    __table_args__ = (UniqueConstraint("owner", "key", name="uq_idempotency_owner_key"),)
    id: int | None = Field(default=None, primary_key=True)
    owner: str = Field(max_length=320)
    key: str = Field(max_length=200)
    job_id: str | None = Field(default=None, max_length=32)  # None while the job is made
    created_at: float = Field(default_factory=time.time)


# Typed Core tables for query expressions: `IMAGE.c.status.in_(...)` type-checks, whereas
# SQLModel's class attributes are declared as plain Python values.
JOB: Table = Job.__table__  # type: ignore[attr-defined]
PRODUCT: Table = Product.__table__  # type: ignore[attr-defined]
IMAGE: Table = Image.__table__  # type: ignore[attr-defined]
REJECTED_ROW: Table = RejectedRow.__table__  # type: ignore[attr-defined]
WORKER: Table = Worker.__table__  # type: ignore[attr-defined]
API_TOKEN: Table = ApiToken.__table__  # type: ignore[attr-defined]
IDEMPOTENCY_KEY: Table = IdempotencyKey.__table__  # type: ignore[attr-defined]
