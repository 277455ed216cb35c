"""One error shape for every answer that is not a success: {"error": code, "message": text}."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ApiError(Exception):
    """An answer other than success: HTTP `status`, a machine `code`, one human sentence."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.extra}


class ErrorBody(BaseModel):
    """What every error answer holds (some add fields, such as `rejected` on a 422)."""

    error: str
    message: str


def not_found(job_id: str) -> ApiError:
    """A missing job and another person's job get exactly this answer."""
    return ApiError(404, "not_found", f"No job with id {job_id[:100]!r}.")


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "Malformed request"),
        (401, "Missing, unknown, expired or revoked token"),
        (404, "No such job (or another person's)"),
    )
}
