"""Jobs: the signed-in person's recent jobs with status, progress, counts and age; each opens
its detail page. Admins see everyone's, with an owner column and an owner filter."""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from downloader import jobs
from downloader.identity import Mode
from pages import _common as common
from pages import _identity

REFRESH_SECONDS = 5.0
LIMIT = 200

services = common.services()
person = _identity.require_viewer()
show_owner = person.admin and person.mode != Mode.SINGLE

st.title("Jobs")
left, right = st.columns([2, 3])
owner: str | None = None
if show_owner:
    owners = jobs.job_owners(services.db)
    choice = st.selectbox(
        "Owner",
        ["*", *[jobs.NO_OWNER if o is None else o for o in owners]],
        format_func=lambda o: "Everyone" if o == "*" else (o or "(no owner: made before owners)"),
        key="jobs_owner",
    )
    owner = None if choice == "*" else choice
statuses = left.multiselect(
    "Status",
    list(common.STATUS_BADGES),
    format_func=common.status_label,
    key="jobs_status",
    placeholder="All statuses",
)
text = right.text_input("Search", key="jobs_text", placeholder="Name, file name or job id")


def _table(items: list[jobs.JobListItem]) -> pd.DataFrame:
    now = time.time()
    return pd.DataFrame(
        [
            {
                "open": common.job_url(item.job.id),
                "name": item.job.name or item.job.id,
                "status": common.status_label(item.job.status),
                "progress": (item.counts.finished / item.counts.total)
                if item.counts.total
                else 1.0,
                "products": item.job.products,
                "images": item.counts.total,
                "done": item.counts.done,
                "failed": item.counts.failed,
                "pending": item.counts.pending,
                "age": common.age(item.job.created_at, now),
                "owner": item.job.owner or "",
                "id": item.job.id,
            }
            for item in items
        ]
    )


def job_list() -> None:
    items = jobs.list_jobs(
        services.db,
        statuses=statuses or None,
        text=text.strip() or None,
        limit=LIMIT,
        visible_to=person,
        owner=owner,
    )
    if not items:
        st.info("No jobs match." if statuses or text or owner is not None else "No jobs yet.")
        st.page_link(common.NEW_JOB_PAGE, label="Create a job", icon=":material/add:")
        return
    frame = _table(items)
    event = st.dataframe(
        frame,
        hide_index=True,
        width="stretch",
        on_select="rerun",
        selection_mode="single-row",
        key="jobs_table",
        column_order=[
            "open",
            "name",
            "status",
            "progress",
            "products",
            "images",
            "done",
            "failed",
            "pending",
            "age",
            *(["owner"] if show_owner else []),
        ],
        column_config={
            "open": st.column_config.LinkColumn("Job", display_text=r"id=(.*)$", width="small"),
            "name": st.column_config.TextColumn("Name", width="large"),
            "status": "Status",
            "progress": st.column_config.ProgressColumn(
                "Progress", min_value=0.0, max_value=1.0, format="percent"
            ),
            "products": st.column_config.NumberColumn("Products"),
            "images": st.column_config.NumberColumn("Images"),
            "done": st.column_config.NumberColumn("Done"),
            "failed": st.column_config.NumberColumn("Failed"),
            "pending": st.column_config.NumberColumn("Pending"),
            "age": "Created",
            "owner": st.column_config.TextColumn("Owner"),
        },
    )
    selected = event.selection.rows if event is not None else []
    if selected:
        common.open_job(str(frame.iloc[selected[0]]["id"]))
    st.caption(
        f"{len(items):,} job(s) shown"
        + (f" (the newest {LIMIT})" if len(items) == LIMIT else "")
        + ". Select a row, or follow its id, to open the job."
    )


active = any(
    item.job.status in ("queued", "running")
    for item in jobs.list_jobs(
        services.db, statuses=["queued", "running"], limit=1, visible_to=person
    )
)
st.fragment(run_every=REFRESH_SECONDS if active else None)(job_list)()
