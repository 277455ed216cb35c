"""System check: database, storage, engine, free disk, sign-in, and the effective settings."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from downloader import health, identity, jobs
from downloader.redact import redact_text
from pages import _common as common
from pages import _identity

services = common.services()
settings = services.settings
_identity.require_viewer()

st.title("System check")
if st.button("Check again", icon=":material/refresh:"):
    st.rerun()

# Which sign-in is configured (docs/identity.md): information, never a failure.
sign_in = health.Check("Sign-in", True, identity.describe(settings, _identity.mode()))
checks = [*health.system_check(services), sign_in]
healthy = all(check.ok for check in checks)
if healthy:
    st.success("Everything needed is working.", icon=":material/check_circle:")
else:
    failing = ", ".join(check.name for check in checks if not check.ok)
    st.error(f"Not healthy: {failing}.", icon=":material/error:")

for check in checks:
    with st.container(border=True, horizontal=True, vertical_alignment="center"):
        st.markdown(
            f"{':material/check_circle:' if check.ok else ':material/cancel:'} **{check.name}**"
        )
        st.caption(common.md_text(check.detail, 1000))  # quotes paths, servers' errors

engine = common.engine_thread()
st.subheader("Engines")
if engine is not None:
    if engine.alive:
        st.caption("This server runs an embedded engine thread: it is alive.")
    elif engine.error is not None:
        error = common.md_text(redact_text(repr(engine.error)), 1000)
        st.error(f"The embedded engine stopped with an error: {error}")
    else:
        st.warning("The embedded engine thread is not running.")
elif settings.embedded_worker and common.installed_services() is None:
    st.caption("No lifespan ran in this process (a test or plain script run): no embedded engine.")
elif not settings.embedded_worker:
    st.caption("EMBEDDED_WORKER is off: jobs are processed by `python -m downloader worker`.")
workers = jobs.live_workers(services.db, stale_after=settings.worker_lease_seconds * 2)
if workers:
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "Engine": w.id,
                    "Kind": w.kind,
                    "Host": w.hostname,
                    "PID": w.pid,
                    "Started": common.age(w.started_at),
                    "Last heartbeat": common.age(w.heartbeat_at),
                    "In flight": w.in_flight,
                    "Downloaded": w.done_total,
                }
                for w in workers
            ]
        ),
        hide_index=True,
        width="stretch",
    )
else:
    st.caption("No live engine has a recent heartbeat.")

st.subheader("Effective settings")
st.caption("From the environment (defaults where unset); secrets are masked.")
shown = settings.masked()
st.dataframe(
    pd.DataFrame({"Setting": list(shown), "Value": [str(value) for value in shown.values()]}),
    hide_index=True,
    width="stretch",
    height=38 + 35 * len(shown),
)
