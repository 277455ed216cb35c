"""The API's request and answer models (they make the OpenAPI document)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class HeaderFor(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = Field(description="HOST, HOST:PORT or *.DOMAIN")
    header: str = Field(description='"Name: value"')


class JobOptionsIn(BaseModel):
    """The job options the app and the CLI have (request headers, naming, conversion)."""

    model_config = ConfigDict(extra="forbid")
    headers: list[str] = Field(
        default_factory=list, max_length=50, description='Request headers, "Name: value" each'
    )
    headers_for: list[HeaderFor] = Field(
        default_factory=list, max_length=50, description="Request headers for one host only"
    )
    any_format: bool = Field(False, description="Accept WebP/AVIF instead of asking for originals")
    naming: str | None = Field(None, max_length=300, description="File name template")
    layout: Literal["per-product", "flat"] | None = None
    convert: Literal["original", "jpeg", "png", "webp"] | None = None
    max_side: int | None = Field(None, ge=16, le=20000)
    pad_square: bool | None = None
    background: str | None = Field(None, max_length=20)
    strip_metadata: bool | None = None
    quality: int | None = Field(None, ge=1, le=100)


class RowIn(BaseModel):
    """One input row: product and url, plus any other columns (kept as extra columns)."""

    model_config = ConfigDict(extra="allow")
    product: str | int
    url: str


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, max_length=200)
    rows: list[RowIn]
    options: JobOptionsIn | None = None
    callback_url: str | None = Field(None, max_length=2048)


class RejectedOut(BaseModel):
    row: int = Field(description="1-based position in `rows`, or the file's sheet row")
    product: str
    url: str
    reason: str


class CreatedOut(BaseModel):
    id: str
    status: str
    products: int
    images: int
    rejected: list[RejectedOut]
    duplicates_removed: int = 0


class CountsOut(BaseModel):
    queued: int
    downloading: int
    done: int
    duplicate: int
    failed: int
    skipped: int


class JobOut(BaseModel):
    id: str
    name: str
    owner: str | None
    status: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    products: int
    images: int
    done: int
    duplicate: int
    failed: int
    skipped: int
    pending: int
    rejected_rows: int
    counts: CountsOut
    images_per_second: float | None = None
    eta_seconds: float | None = None
    webhook: dict[str, object] | None = Field(
        None, description="callback_url and its delivery (status, attempts, error, sent_at)"
    )


class JobListOut(BaseModel):
    items: list[JobOut]
    limit: int
    offset: int
    next_offset: int | None


class ProductOut(BaseModel):
    product: str
    images: int
    done: int
    duplicate: int
    failed: int
    skipped: int
    pending: int
    status: str


class ProductListOut(BaseModel):
    items: list[ProductOut]
    limit: int
    offset: int
    next_offset: int | None


class FailedOut(BaseModel):
    product: str
    position: int
    url: str
    error_code: str | None
    error: str | None
    http_status: int | None
    attempts: int


class ControlOut(BaseModel):
    id: str
    status: str
    retried: int | None = None


class DeletedOut(BaseModel):
    id: str
    deleted: bool
