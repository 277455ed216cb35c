"""API tokens: the signed-in person makes and revokes their own tokens for the HTTP API
(docs/api.md). A new token is shown once; only its hash is kept."""

from __future__ import annotations

import datetime as dt

import streamlit as st

from downloader import tokens
from pages import _common as common
from pages import _identity

services = common.services()
person = _identity.require_viewer()

st.title("API tokens")
st.write(
    "Scripts and other systems use the HTTP API under `/api/v1/` with a personal token "
    "(`Authorization: Bearer TOKEN`). A token acts as you: its jobs are yours. "
    "The API is described at [/api/v1/openapi.json](/api/v1/openapi.json)."
)


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "—"
    return dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


with st.form("new_token", clear_on_submit=True):
    name = st.text_input("Name", max_chars=tokens.MAX_NAME, placeholder="nightly catalogue sync")
    days = st.number_input("Expires after (days, 0 = never)", 0, 3650, 90)
    if st.form_submit_button("Create token", icon=":material/key:"):
        try:
            info, secret = tokens.create_token(
                services.db, person.owner, name=name, expires_days=float(days) or None
            )
        except tokens.TokenError as exc:
            st.error(str(exc))
        else:
            st.session_state["token_shown_once"] = (info.id, secret)

shown = st.session_state.pop("token_shown_once", None)
if shown is not None:
    st.success("Copy this token now: it is shown only once.", icon=":material/key:")
    st.code(shown[1], language=None)

mine = tokens.list_tokens(services.db, person.owner)
if not mine:
    st.info("You have no active tokens.")
for info in mine:
    left, right = st.columns([5, 1])
    left.markdown(
        f"**{common.md_text(info.name or 'unnamed', 100)}** · id `{info.id}` · created "
        f"{_when(info.created_at)} · last used {_when(info.last_used_at)} · expires "
        f"{_when(info.expires_at)}"
    )
    if right.button("Revoke", key=f"revoke-{info.id}", icon=":material/block:"):
        tokens.revoke_token(services.db, info.id, person.owner)
        st.rerun()
