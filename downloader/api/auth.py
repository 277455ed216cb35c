"""Bearer tokens: who a request is (a Viewer acting as the token's owner), and the token
endpoints GET /v1/tokens and DELETE /v1/tokens/{id}."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from downloader import identity, tokens
from downloader.api.errors import ERRORS, ApiError
from downloader.identity import Mode, Viewer
from downloader.services import Services

bearer = HTTPBearer(auto_error=False, description="A personal API token (docs/api.md)")
UNAUTHORISED = {"WWW-Authenticate": "Bearer"}


def services_of(request: Request) -> Services:
    """The app's services (built by app.py's lifespan); 503 before they exist."""
    services = request.app.state.get_services()
    if services is None:
        raise ApiError(503, "starting", "The app is starting; try again in a moment.")
    return services


@dataclass(frozen=True)
class Caller:
    """Who is asking: their token and the Viewer the jobs service checks ownership with."""

    services: Services
    token: tokens.TokenInfo
    person: Viewer


def _refuse(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers=UNAUTHORISED)


async def caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    services = services_of(request)
    if credentials is None:
        raise _refuse("Send a personal API token: Authorization: Bearer TOKEN.")
    token = await run_in_threadpool(tokens.authenticate, services.db, credentials.credentials)
    if token is None:
        raise _refuse("The API token is unknown, expired or revoked.")
    # A token always acts as its owner: ownership applies even when the app itself runs in
    # single-user mode (then its jobs belong to identity.SINGLE_USER, "local").
    person = Viewer(
        token.owner, admin=identity.is_admin(services.settings, token.owner), mode=Mode.HEADER
    )
    return Caller(services, token, person)


CallerDep = Annotated[Caller, Depends(caller)]
router = APIRouter(tags=["tokens"], responses=ERRORS)


class TokenOut(BaseModel):
    id: str
    name: str
    created_at: float
    last_used_at: float | None
    expires_at: float | None


class Revoked(BaseModel):
    id: str
    revoked: bool


@router.get("/v1/tokens", response_model=list[TokenOut], summary="Your active API tokens")
def list_my_tokens(who: CallerDep) -> Any:
    return [t.as_dict() for t in tokens.list_tokens(who.services.db, who.token.owner)]


@router.delete("/v1/tokens/{token_id}", response_model=Revoked, summary="Revoke one of your tokens")
def revoke_my_token(token_id: str, who: CallerDep) -> Any:
    if not tokens.revoke_token(who.services.db, token_id[:64], who.token.owner):
        raise ApiError(404, "not_found", f"No active token with id {token_id[:64]!r}.")
    return {"id": token_id, "revoked": True}
