"""Job detail: live progress, per-product progress, failures, downloads and a gallery.

The page reads aggregates only (counts by state, one row per product for the shown page),
never every image row. While the job runs, the progress part is a fragment that reruns every
2 seconds; once the job has finished it stops polling.
"""

from __future__ import annotations

import math
from functools import partial
from html import escape

import pandas as pd
import streamlit as st

from downloader import jobs
from downloader.jobs.control import retry_counts
from downloader.ui_queries import find_products, thumbnail
from pages import _common as common
from pages import _identity

REFRESH_SECONDS = 2.0
PRODUCTS_PER_PAGE = 200
DOWNLOAD_BUTTONS = 24
GALLERY_IMAGES = 60
REJECTED_SHOWN = 1000

services = common.services()
db = services.db
person = _identity.require_viewer()  # its owner and admins only (downloader.identity)


# ---------------------------------------------------------------- no job chosen

job_id = st.query_params.get("id", "")
if not job_id:
    st.title("Job detail")
    recent = jobs.list_jobs(db, limit=50, visible_to=person)
    if not recent:
        st.info("No jobs yet.")
        st.page_link(common.NEW_JOB_PAGE, label="Create a job", icon=":material/add:")
        st.stop()
    choice = st.selectbox(
        "Open a job",
        recent,
        format_func=lambda item: (
            f"{item.job.name or item.job.id} — {common.status_label(item.job.status)}, "
            f"{common.age(item.job.created_at)}"
        ),
    )
    if st.button("Open", type="primary") and choice is not None:
        common.open_job(choice.job.id)
    st.stop()

try:
    if jobs.job_for(db, job_id, person) is None:  # someone else's: as if there were none
        raise jobs.JobNotFound(job_id)
    summary = jobs.job_summary(db, job_id)
except jobs.JobNotFound:
    st.title("Job detail")
    st.error(  # the id is whatever the address says: shown as text, cut
        f"There is no job with id {common.md_text(job_id, 100)}. It may have been deleted "
        "after its retention time."
    )
    st.page_link(common.JOBS_PAGE, label="All jobs", icon=":material/list_alt:")
    st.stop()

job = summary.job


# ---------------------------------------------------------------- header and controls


def _act(action: str) -> None:
    if action == "pause":
        done = jobs.pause_job(db, job.id, person=person)
        st.toast("Paused." if done else "The job was not running.")
    elif action == "resume":
        done = jobs.resume_job(db, job.id, person=person)
        st.toast("Resumed." if done else "The job was not paused.")
    elif action == "cancel":
        done = jobs.cancel_job(db, job.id, person=person)
        st.toast("Cancelled: queued images are skipped." if done else "The job had finished.")
    elif action in ("retry", "transient", "permanent"):
        kind = "all" if action == "retry" else action
        count = jobs.retry_failed(db, job.id, person=person, kind=kind)  # type: ignore[arg-type]
        st.toast(f"{count:,} image(s) queued again." if count else "Nothing to retry.")


st.title(common.md_text(job.name or f"Job {job.id}"))  # names are user text, not Markdown
meta = st.container(horizontal=True, vertical_alignment="center")
with meta:
    common.status_badge(job.status)
    st.caption(
        f"Job `{job.id}` · created {common.age(job.created_at)} · "
        f"{common.md_text(job.source or 'no source')} · "
        f"{job.products:,} products · {job.images:,} images · "
        f"{job.rejected_rows:,} rejected rows · {job.duplicates_removed:,} duplicate URLs removed"
    )

if summary.is_active and not jobs.live_workers(
    db, stale_after=services.settings.worker_lease_seconds * 2
):
    st.warning(
        "No engine is running, so this job waits. Start one with `python -m downloader worker` "
        "(or run the app with EMBEDDED_WORKER on).",
        icon=":material/pending:",
    )

controls = st.container(horizontal=True)
status = job.status
with controls:
    if status in ("queued", "running"):
        st.button("Pause", icon=":material/pause:", on_click=_act, args=("pause",))
    if status == "paused":
        st.button("Resume", icon=":material/play_arrow:", on_click=_act, args=("resume",))
    if status in ("queued", "running", "paused"):
        st.button("Cancel", icon=":material/cancel:", on_click=_act, args=("cancel",))
    retryable = summary.counts.failed + summary.counts.skipped
    if retryable and not summary.is_active:
        # transient failures (timeouts, 429, 5xx, connection errors) may pass now; permanent
        # ones (404, 410, not an image, too large) would most likely fail the same way again
        transient, permanent = retry_counts(db, job.id)
        if transient:
            st.button(
                f"Retry failed ({transient:,})",
                icon=":material/replay:",
                on_click=_act,
                args=("transient",),
                help="Timeouts, throttling (429), server errors (5xx), connection errors.",
            )
        if permanent:
            st.button(
                f"Retry permanent failures ({permanent:,})",
                icon=":material/replay:",
                on_click=_act,
                args=("permanent",),
                help="404, 410, not an image, too large ...: likely to fail again.",
            )
    st.page_link(common.JOBS_PAGE, label="All jobs", icon=":material/list_alt:")

# Hosts this server's engine slows down now (throttling, learned rate) or has paused (breaker
# open). Separate worker processes keep theirs in their own memory (docs/scaling.md).
slowed = jobs.slowed_hosts() if summary.is_active else []
if slowed:
    with st.expander(f"Hosts slowed down ({len(slowed)})", icon=":material/speed:"):
        st.dataframe(
            pd.DataFrame(
                [
                    (
                        s.host,
                        "open (paused)"
                        if s.rate < 0
                        else ("throttled" if s.throttled_for else "limited"),
                        "" if s.rate <= 0 else f"{s.rate:g}/s",
                        f"{s.paused_for:g} s" if s.paused_for else "",
                    )
                    for s in slowed
                ],
                columns=["Host", "State", "Rate in use", "Paused for"],
            ),
            hide_index=True,
            width="stretch",
        )

# The job's own request headers: names and hosts, every value masked, for its owner only.
own_headers = jobs.request_headers_shown(db, job.id, viewer=person.email)
if own_headers is not None:
    header_rows, any_format = own_headers
    with st.expander(f"Request headers ({len(header_rows)})", icon=":material/tune:"):
        if header_rows:
            st.dataframe(
                pd.DataFrame(
                    [(row.scope, row.name, row.value) for row in header_rows],
                    columns=["Host", "Header", "Value"],
                ),
                hide_index=True,
                width="stretch",
            )
        if any_format:
            st.caption("Any format the CDN prefers (WebP/AVIF) is accepted.")
        st.caption("Values are never shown; they are deleted with the job.")

# The job's webhook delivery (when it has a callback): its state for whoever may open the job,
# its target (redacted) for its owner only.
if hook := jobs.webhook_view(db, job.id, person.email):
    st.caption(
        common.md_text(hook.line, limit=400)
        + (f" · to {common.md_text(hook.url)}" if hook.url else ""),
        help="A signed POST when the job ends, retried with backoff (docs/api.md).",
    )


# ---------------------------------------------------------------- live progress


def _progress(current: jobs.JobSummary) -> None:
    counts = current.counts
    total = counts.total
    st.progress(
        min(max(current.progress, 0.0), 1.0),
        text=f"{counts.finished:,} of {total:,} images finished ({current.progress:.0%})",
    )
    if place := jobs.job_place(db, current.job.id):  # fair share: waiting or downloading
        st.caption(jobs.PLACE_LABELS[place])
    cells = st.columns(8)
    cells[0].metric("Done", f"{counts.done:,}")
    cells[1].metric("Duplicate", f"{counts.duplicate:,}")
    cells[2].metric("Failed", f"{counts.failed:,}")
    cells[3].metric("Skipped", f"{counts.skipped:,}")
    cells[4].metric("Queued", f"{counts.queued:,}")
    cells[5].metric("Downloading", f"{counts.downloading:,}")
    rate = current.images_per_second
    cells[6].metric("Images/s", f"{rate:.1f}" if rate is not None else "—")
    cells[7].metric(
        "Time left",
        common.duration(current.eta_seconds) if current.is_active else "—",
    )


def _products_table() -> None:
    left, middle, right = st.columns([3, 2, 1], vertical_alignment="bottom")
    text = left.text_input("Find a product", key="pp_text", placeholder="Product number")
    only_problems = middle.toggle("Only products with failures", key="pp_problems")
    filtered = bool(text.strip()) or only_problems
    pages = max(1, math.ceil(job.products / PRODUCTS_PER_PAGE)) if not filtered else 1
    page = int(right.number_input("Page", 1, pages, 1, key="pp_page")) if pages > 1 else 1
    frame = jobs.product_progress(
        db,
        job.id,
        text=text.strip() or None,
        only_problems=only_problems,
        limit=PRODUCTS_PER_PAGE,
        offset=(page - 1) * PRODUCTS_PER_PAGE,
    )
    if frame.empty:
        st.caption("No product matches." if filtered else "This job has no products.")
        return
    st.dataframe(
        frame[
            ["product", "progress", "status", "images", "done", "duplicate", "failed", "pending"]
        ],
        hide_index=True,
        width="stretch",
        height=min(420, 38 + 35 * len(frame)),
        column_config={
            "product": st.column_config.TextColumn("Product"),
            "progress": st.column_config.ProgressColumn(
                "Progress", min_value=0.0, max_value=1.0, format="percent"
            ),
            "status": st.column_config.TextColumn("Status"),
            "images": st.column_config.NumberColumn("Images"),
            "done": st.column_config.NumberColumn("Done"),
            "duplicate": st.column_config.NumberColumn("Duplicates"),
            "failed": st.column_config.NumberColumn("Errors"),
            "pending": st.column_config.NumberColumn("Pending"),
        },
    )
    first = (page - 1) * PRODUCTS_PER_PAGE + 1
    if filtered:
        st.caption(f"{len(frame):,} matching product(s) shown (at most {PRODUCTS_PER_PAGE}).")
    else:
        st.caption(f"Products {first:,}–{first + len(frame) - 1:,} of {job.products:,}.")  # noqa: RUF001


def live(status_shown: str) -> None:
    current = jobs.job_summary(db, job.id)
    if current.job.status != status_shown:
        # Started, finished, paused or cancelled: redraw the whole page once (header,
        # controls, downloads); a job that is no longer active stops polling there.
        st.rerun()
    _progress(current)
    st.subheader("Products")
    _products_table()


st.fragment(run_every=REFRESH_SECONDS if summary.is_active else None)(live)(job.status)


# ---------------------------------------------------------------- the rest

downloads, failures, gallery, problems = st.tabs(
    ["Downloads", "Failed images", "Gallery", "Input problems"]
)


def _link_button(url: str, label: str, primary: bool = False) -> str:
    colors = (
        "background:#ff4b4b;color:white;border-color:#ff4b4b;"
        if primary
        else "background:transparent;color:inherit;border-color:rgba(128,128,128,0.4);"
    )
    return (
        f'<a href="{escape(url)}" download data-testid="bid-download-link" '
        f'style="display:inline-block;padding:0.4rem 0.9rem;margin:0 0.5rem 0.5rem 0;'
        f'border:1px solid;border-radius:0.5rem;text-decoration:none;{colors}">'
        f"{escape(label)}</a>"
    )


# With st.login the download routes cannot see who is signed in: each link carries a signed,
# expiring grant for this person (downloader.links); "" in the other modes.
signed = _identity.signed_query(job.id, person)

with downloads:
    st.markdown("**Everything**")
    st.html(
        _link_button(common.job_zip_url(job.id) + signed, "⬇ All products (ZIP)", True)
        + _link_button(common.manifest_url(job.id) + signed, "⬇ Manifest (CSV)")
        + _link_button(common.failed_csv_url(job.id) + signed, "⬇ Failed rows (CSV)")
    )
    st.caption(
        "The ZIP of all products streams as it is built: the download starts at once, whatever "
        "its size. Each product has a folder; manifest.csv lists every image with its status."
    )
    st.download_button(
        "Report (Excel)",
        data=partial(jobs.report_bytes, db, services.storage, job.id),
        file_name=jobs.report_file_name(job.id),
        mime="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        icon=":material/table_view:",
        on_click="ignore",
        key="report-xlsx",
        help="A row per image with its thumbnail, the input's own columns, status, size and "
        "warnings; a row per product on the Products sheet",
    )
    if not summary.is_active:  # counted once the job is finished (a pass over its images)
        warned = jobs.warning_counts(db, job.id)
        if warned:
            st.warning(
                "Marketplace checks (warnings, the images are in the ZIPs): "
                + ", ".join(f"{code} {count:,}" for code, count in sorted(warned.items()))
                + ". The manifest and the report name them per image.",
                icon=":material/rule:",
            )

    @st.fragment
    def product_downloads() -> None:
        st.markdown("**One product**")
        text = st.text_input(
            "Find a product",
            key="dl_text",
            placeholder="Product number",
            label_visibility="collapsed",
        )
        found = find_products(db, job.id, text.strip() or None, limit=DOWNLOAD_BUTTONS)
        if not found:
            st.caption("No product matches.")
            return
        grid = st.columns(4)
        folders = jobs.product_folders(db, job.id, [product for product, _ in found])
        for index, (product, images) in enumerate(found):
            zip_name = jobs.zip_file_name(job, product, folder=folders.get(product))
            grid[index % 4].download_button(
                product,
                data=partial(jobs.product_zip_bytes, db, services.storage, job.id, product),
                file_name=zip_name,
                mime="application/zip",
                icon=":material/folder_zip:",
                on_click="ignore",
                key=f"zip-{product}",
                help=f"{zip_name}: its downloaded images (of {images:,}) and manifest.csv",
                width="stretch",
            )
        if job.products > len(found):
            st.caption(
                f"Showing {len(found):,} of {job.products:,} products; type to find the others."
            )

    product_downloads()


with failures:

    @st.fragment
    def failed_images() -> None:
        errors = jobs.error_summary(db, job.id)
        if not errors:
            st.success("No failed images.", icon=":material/check:")
            return
        left, right = st.columns([1, 2])
        code = left.selectbox(
            "Reason",
            ["", *errors],
            format_func=lambda c: (
                f"All reasons ({sum(errors.values()):,})" if c == "" else f"{c} ({errors[c]:,})"
            ),
            key="fail_code",
        )
        text = right.text_input("Find (product or URL)", key="fail_text")
        frame = jobs.failed_images(
            db, job.id, error_code=code or None, text=text.strip() or None, limit=1000
        )
        st.dataframe(
            common.redacted(frame, "url", "error"),  # no credentials or tokens on screen
            hide_index=True,
            width="stretch",
            column_config={
                "product": "Product",
                "position": st.column_config.NumberColumn("#", width="small"),
                "url": st.column_config.LinkColumn("URL"),
                "error_code": "Code",
                "error": st.column_config.TextColumn("Reason", width="large"),
                "http_status": st.column_config.NumberColumn("HTTP"),
                "attempts": st.column_config.NumberColumn("Attempts"),
            },
        )
        if len(frame) == 1000:
            st.caption("The first 1,000 are shown; the failed-rows CSV has them all.")

    failed_images()


@st.cache_data(max_entries=600, show_spinner=False)
def _thumbnail(key: str) -> bytes:
    return thumbnail(common.services().storage, key)


with gallery:

    @st.fragment
    def image_gallery() -> None:
        left, right = st.columns([1, 2])
        text = left.text_input("Find a product", key="gal_text", placeholder="Product number")
        candidates = [number for number, _ in find_products(db, job.id, text.strip() or None, 200)]
        if not candidates:
            st.caption("No product matches.")
            return
        product = right.selectbox("Product", candidates, key="gal_product")
        if product is None:
            return
        images = jobs.product_images(db, job.id, product, limit=GALLERY_IMAGES)
        shown = [image for image in images if image.key and image.status == "done"]
        if not shown:
            st.caption("No downloaded images for this product yet.")
        columns = st.columns(6)
        for index, image in enumerate(shown):
            with columns[index % 6]:
                try:
                    st.image(_thumbnail(str(image.key)), width="stretch")
                except Exception:
                    st.caption("(image unavailable)")
                size = f" · {image.width}×{image.height}" if image.width and image.height else ""  # noqa: RUF001
                st.caption(common.md_text(f"{image.file}{size}"))
                if image.details:  # colour mode, alpha, frames, ICC profile, orientation
                    st.caption(common.md_text(image.details))
        others = [image for image in images if image not in shown]
        if others:
            st.dataframe(
                common.redacted(
                    pd.DataFrame(
                        [(i.position, i.status, i.error or "") for i in others],
                        columns=["#", "Status", "Reason"],
                    ),
                    "Reason",
                ),
                hide_index=True,
                width="stretch",
            )

    image_gallery()


with problems:
    if not (job.rejected_rows or job.duplicates_removed):
        st.success("Every input row was queued.", icon=":material/check:")
    else:
        rows = jobs.rejected_rows(db, job.id, limit=REJECTED_SHOWN)
        st.caption(
            f"{job.rejected_rows:,} rejected row(s) and {job.duplicates_removed:,} duplicate "
            "URL(s) were left out when the job was created."
            + (
                f" The first {REJECTED_SHOWN:,} are shown; the CSV has them all."
                if job.rejected_rows + job.duplicates_removed > REJECTED_SHOWN
                else ""
            )
        )
        st.html(_link_button(common.rejected_csv_url(job.id) + signed, "⬇ Rejected rows (CSV)"))
        st.dataframe(
            common.redacted(rows, "url", "reason").rename(
                columns={
                    "row": "Row",
                    "kind": "Kind",
                    "reason": "Reason",
                    "product": "Product",
                    "url": "URL",
                }
            ),
            hide_index=True,
            width="stretch",
        )
