"""`python -m downloader token create|list|revoke`: personal API tokens (downloader.tokens).

`create` prints {"id": ..., "token": ...} as its last stdout line: the only time the secret
is shown (the database keeps its hash).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from downloader.cli_support import emit, services_for
from downloader.errors import UserError

EXIT_OK, EXIT_NOT_FOUND = 0, 1


class TokenUsageError(UserError):
    pass


def add_token_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    token = sub.add_parser("token", help="personal API tokens for the HTTP API (docs/api.md)")
    actions = token.add_subparsers(dest="token_command", required=True)

    p = actions.add_parser("create", help="make a token; prints it once")
    common(p)
    p.add_argument("--owner", required=True, help="who the token acts as (an e-mail)")
    p.add_argument("--name", default="", help="what the token is for")
    p.add_argument("--expires-days", type=float, help="expire after this many days")
    p.set_defaults(handler=cmd_token_create)

    p = actions.add_parser("list", help="active tokens (never their secrets)")
    common(p)
    p.add_argument("--owner", help="only this person's tokens")
    p.add_argument("--all", action="store_true", help="revoked and expired ones too")
    p.set_defaults(handler=cmd_token_list)

    p = actions.add_parser("revoke", help="revoke a token by its id")
    common(p)
    p.add_argument("token_id")
    p.set_defaults(handler=cmd_token_revoke)


def cmd_token_create(args: argparse.Namespace) -> int:
    from downloader import tokens

    services = services_for(args)
    try:
        info, secret = tokens.create_token(
            services.db, args.owner, name=args.name, expires_days=args.expires_days
        )
    except tokens.TokenError as exc:
        raise TokenUsageError(str(exc)) from None
    emit(
        {
            "id": info.id,
            "owner": info.owner,
            "name": info.name,
            "expires_at": info.expires_at,
            "token": secret,
        }
    )
    return EXIT_OK


def cmd_token_list(args: argparse.Namespace) -> int:
    from downloader import tokens

    services = services_for(args)
    found = tokens.list_tokens(services.db, args.owner, active_only=not args.all)
    for info in found:
        emit({**info.as_dict(), "owner": info.owner, "revoked_at": info.revoked_at})
    return EXIT_OK


def cmd_token_revoke(args: argparse.Namespace) -> int:
    from downloader import tokens

    services = services_for(args)
    revoked = tokens.revoke_token(services.db, args.token_id)
    emit({"id": args.token_id, "revoked": revoked})
    return EXIT_OK if revoked else EXIT_NOT_FOUND
