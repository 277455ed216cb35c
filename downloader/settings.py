"""All configuration in one pydantic-settings class, read from the environment.

Invalid values fail at start with a message naming the setting (see `load_settings`).
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from downloader.errors import UserError
from downloader.hosts import compile_host_patterns
from downloader.redact import redact_url

CsvList = Annotated[list[str], NoDecode]
#: Every image format the engine can keep, by extension (downloader.fetch.sniff.FORMATS).
IMAGE_FORMATS = ("jpg", "png", "webp", "avif", "gif", "tif", "bmp", "heic", "jxl")


class SettingsError(UserError, ValueError):
    """A setting from the environment is invalid; the message names it."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore")

    # Downloads
    max_global_concurrency: int = Field(
        32, ge=1, le=4096, description="downloads at once, whole deployment"
    )
    max_per_host_concurrency: int = Field(
        4, ge=1, le=1024, description="downloads at once from one host, never exceeded"
    )
    download_qps: float = Field(20, ge=0, description="global requests per second; 0 = unlimited")
    per_host_qps: float = Field(
        0, ge=0, description="requests per second to one host, at most; 0 = learn only"
    )
    http_connect_timeout: float = Field(5, gt=0, description="seconds to connect")
    http_read_timeout: float = Field(45, gt=0, description="longest silence while reading, seconds")
    download_deadline: float = Field(120, gt=0, description="seconds for a whole image")
    max_image_size_mb: float = Field(50, gt=0, description="larger bodies fail with too_large")
    max_retries: int = Field(
        3, ge=0, le=20, description="retries for connection errors, timeouts, 408 and 5xx"
    )
    retry_after_cap: float = Field(60, ge=0, description="longest Retry-After honoured, seconds")
    throttle_patience: float = Field(
        0, ge=0, description="seconds an image waits out a throttling host; 0 = 3 x deadline"
    )
    backoff_base: float = Field(0.5, ge=0, description="first retry delay, seconds")
    max_redirects: int = Field(5, ge=0, le=20, description="redirect hops followed per image")
    user_agent: str = Field(
        "BatchImageDownloader/1.0 (+internal analytics tool)",
        description="default User-Agent (a job's own headers override it)",
    )
    circuit_breaker_failures: int = Field(
        10, ge=1, description="consecutive connection failures, timeouts or 5xx before a pause"
    )
    circuit_breaker_cooldown: float = Field(
        30, ge=0, description="seconds a host stays paused before one probe request"
    )
    accept_any_format: bool = Field(
        False, description="advertise AVIF/WebP in Accept (CDNs may then convert the original)"
    )
    accepted_formats: CsvList = Field(
        default_factory=lambda: list(IMAGE_FORMATS),
        description="image formats kept (extensions: jpg,png,gif,webp,avif,tif,bmp,heic,jxl)",
    )
    verify_images: Literal["structure", "full"] = Field(
        "structure", description="structure = walk every file to its end; full = also decode"
    )

    # Company networks (docs/network.md): the usual variables, upper- or lower-case
    http_proxy: str | None = Field(None, description="proxy for http:// images (http_proxy too)")
    https_proxy: str | None = Field(
        None, description="proxy for https:// images, via CONNECT (https_proxy too)"
    )
    no_proxy: str | None = Field(None, description="hosts that go direct (no_proxy too)")
    ssl_cert_file: str | None = Field(None, description="extra CA certificates (PEM file)")
    ssl_cert_dir: str | None = Field(None, description="extra CA certificates (hashed folder)")
    tls_trust: Literal["default", "system"] = Field(
        "default", description="default = certifi's CAs; system = the OS store (truststore)"
    )

    # Storage and database
    database_url: str = Field(
        "sqlite:///data/app.db", description="SQLite file or postgresql://user:pass@host/db"
    )
    media_backend: Literal["local", "s3"] = Field(
        "local", description="local = a folder (MEDIA_ROOT); s3 = a bucket"
    )
    media_root: str = Field("data/media", description="folder for the local backend")
    aws_access_key_id: str | None = Field(None, description="S3 key (unset: boto3's chain)")
    aws_secret_access_key: str | None = Field(None, description="S3 secret (unset: boto3's chain)")
    aws_storage_bucket_name: str | None = Field(None, description="S3 bucket")
    aws_s3_region_name: str = Field("us-east-1", description="S3 region")
    aws_s3_endpoint_url: str | None = Field(
        None, description="S3-compatible store (MinIO, Ceph, R2, …)"
    )

    # Safety
    allowed_private_networks: CsvList = Field(
        default_factory=list, description="CIDRs exempted from the private-address block"
    )
    url_allowlist: CsvList = Field(
        default_factory=list, description="only these hosts (globs; IP patterns and CIDRs)"
    )
    url_denylist: CsvList = Field(
        default_factory=list, description="never these hosts (globs; IP patterns and CIDRs)"
    )
    max_rows_per_job: int = Field(
        1_000_000, ge=1, description="larger inputs are refused with a message"
    )
    max_upload_mb: int = Field(
        200, ge=1, description="upload size limit (as .streamlit/config.toml)"
    )
    job_rate_limit_per_minute: int = Field(10, ge=0, description="jobs per person; 0 = unlimited")
    download_stall_timeout: float = Field(
        60, gt=0, description="seconds a download client may stop reading before it is cut off"
    )

    # Identity (docs/identity.md): single user, st.login (OIDC) or an SSO proxy's header
    trusted_user_header: str | None = Field(
        None, description="request header with the signed-in e-mail, set by an SSO proxy"
    )
    admin_users: CsvList = Field(
        default_factory=list, description="e-mails that see and control every job"
    )
    max_active_jobs_per_user: int = Field(
        10, ge=0, description="queued + running jobs per person; 0 = unlimited"
    )
    download_link_secret: str | None = Field(
        None,
        min_length=32,
        description="HMAC key of signed download links; unset = generated next to MEDIA_ROOT",
    )
    download_link_ttl: int = Field(
        3600, ge=60, le=7 * 86400, description="seconds a signed download link stays valid"
    )

    # HTTP API (docs/api.md): webhooks and metrics
    webhook_secret: str | None = Field(
        None, min_length=16, description="HMAC-SHA256 key of X-Signature-256; unset = no webhooks"
    )
    webhook_allowlist: CsvList = Field(
        default_factory=list, description="CIDRs a callback_url may reach besides public ones"
    )
    metrics_enabled: bool = Field(False, description="serve GET /metrics (Prometheus)")

    # Workers
    job_retention_days: int = Field(30, ge=0, description="0 = keep forever")
    worker_lease_seconds: float = Field(
        30, gt=0, description="a claim on an image without a heartbeat, seconds"
    )
    embedded_worker: bool = Field(
        True, description="the app runs its own engine; false when external workers run"
    )
    claim_batch_size: int = Field(256, ge=1, description="images claimed at most per claim")
    run_processes: int = Field(
        0, ge=0, le=64, description="engine processes for `run`; 0 = one per CPU core"
    )

    @field_validator(
        "allowed_private_networks",
        "url_allowlist",
        "url_denylist",
        "admin_users",
        "webhook_allowlist",
        mode="before",
    )
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("accepted_formats", mode="before")
    @classmethod
    def _split_formats(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip().lower().lstrip(".") for part in value.split(",") if part.strip()]
        return value

    @field_validator("accepted_formats")
    @classmethod
    def _check_formats(cls, value: list[str]) -> list[str]:
        aliases = {"jpeg": "jpg", "tiff": "tif", "heif": "heic"}
        value = [aliases.get(fmt, fmt) for fmt in value]
        unknown = [fmt for fmt in value if fmt not in IMAGE_FORMATS]
        if unknown or not value:
            raise ValueError(
                f"{', '.join(unknown) or 'nothing'} is not one of {', '.join(IMAGE_FORMATS)}"
            )
        return [fmt for fmt in IMAGE_FORMATS if fmt in value]  # one order, no repeats

    @field_validator("allowed_private_networks", "webhook_allowlist")
    @classmethod
    def _check_cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"{cidr!r} is not a CIDR network") from exc
        return value

    @field_validator("url_allowlist", "url_denylist")
    @classmethod
    def _check_host_patterns(cls, value: list[str]) -> list[str]:
        # A pattern with "/" is a CIDR: a bad one stops the program here, not the engine later.
        compile_host_patterns(value)
        return value

    @field_validator("http_proxy", "https_proxy")
    @classmethod
    def _check_proxy(cls, value: str | None) -> str | None:
        # http:// and https:// proxies (a bare host:port is http://); others stop the start.
        if value and "://" in value and value.split("://", 1)[0].lower() not in ("http", "https"):
            raise ValueError("only http:// and https:// proxies are supported")
        return value

    @field_validator("download_link_secret", "webhook_secret", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("admin_users")
    @classmethod
    def _lower_emails(cls, value: list[str]) -> list[str]:
        return [email.lower() for email in value]

    @field_validator("trusted_user_header")
    @classmethod
    def _check_header_name(cls, value: str | None) -> str | None:
        # An HTTP field name (RFC 9110 token), e.g. X-Forwarded-Email; blank = unset.
        value = (value or "").strip()
        if not value:
            return None
        if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}", value):
            raise ValueError(f"{value[:100]!r} is not an HTTP header name")
        return value

    @property
    def throttle_wait(self) -> float:
        """How long an image waits out a host that keeps throttling (THROTTLE_PATIENCE; unset:
        three DOWNLOAD_DEADLINEs, since that waiting is not charged to the deadline)."""
        return self.throttle_patience or 3 * self.download_deadline

    @property
    def max_image_bytes(self) -> int:
        return int(self.max_image_size_mb * 1024 * 1024)

    def masked(self) -> dict[str, object]:
        """Effective settings for display, with secrets replaced."""
        secret_words = ("secret", "password", "key_id")
        shown: dict[str, object] = {}
        for name, value in self.model_dump().items():
            if value and any(word in name for word in secret_words):
                value = "********"
            elif isinstance(value, str) and "://" in value:
                # Every URL-shaped setting: userinfo passwords, `?password=`, tokens.
                value = redact_url(value)
            elif isinstance(value, str) and name.endswith("_proxy") and "@" in value:
                value = redact_url("http://" + value).removeprefix("http://")  # user:pw@host
            shown[name.upper()] = value
        return shown


def load_settings(**overrides: object) -> Settings:
    """Read settings; raise SettingsError naming each bad setting."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ".".join(str(part) for part in err["loc"]).upper()
            problems.append(f"{name}: {err['msg']}")
        raise SettingsError("Invalid setting " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings (the app and CLI); tests build their own with load_settings."""
    return load_settings()
