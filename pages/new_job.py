"""New job (the landing page): paste into the grid, upload a file or paste text; preview; queue."""

from __future__ import annotations

import hashlib

import pandas as pd
import streamlit as st

from downloader import jobs
from downloader.inputs import (
    InputError,
    ParsedInput,
    parse_bytes,
    parse_text,
    sample_csv,
    sheet_names,
)
from downloader.job_options import DEFAULT_NAMING, JobOptions
from downloader.naming import unique_folder_names
from downloader.templates import TemplateError, check_template, column_field
from downloader.ui_queries import GridParse, clean_grid_rows, grid_fingerprint, parse_grid
from pages import _common as common
from pages import _grid, _identity, _outputs

GRID = "Paste into the grid"
FILE = "Upload a file"
TEXT = "Paste as text"
SOURCES = [GRID, FILE, TEXT]

services = common.services()
settings = services.settings
person = _identity.require_viewer()
state = st.session_state

state.setdefault("grid_epoch", 0)
state.setdefault("grid_rows", [])
if "app_runs" not in state:  # app.py counts full runs; count here when run on its own
    state["page_runs"] = state.get("page_runs", 0) + 1
runs = int(state.get("app_runs") or state.get("page_runs") or 0)


def _clear_grid() -> None:
    state["grid_epoch"] += 1
    state["grid_rows"] = []
    state.pop("grid_parse", None)


def _use_file_uploader() -> None:
    state["source"] = FILE


# ---------------------------------------------------------------- sources


def grid_source() -> tuple[ParsedInput | None, str, dict[int, int] | None]:
    """The paste grid. Returns (parsed, source description, parser row -> grid row)."""
    # The grid was not on screen in the previous run (other page or source): the browser
    # mounts a new one, which starts from the rows we kept.
    if state.get("grid_last_run") != runs - 1:
        state["grid_epoch"] += 1
    state["grid_last_run"] = runs
    key = f"paste-grid-{state['grid_epoch']}"
    if state.get("grid_seed_key") != key:
        state["grid_seed_key"] = key
        state["grid_seed"] = _grid.seed_frame(state["grid_rows"])

    # Read the grid's last report before drawing it, so the highlight matches this parse.
    report = state.get(key)
    if isinstance(report, dict) and (key, report.get("version")) != state.get("grid_seen"):
        state["grid_seen"] = (key, report.get("version"))
        state["grid_rows"] = clean_grid_rows(report.get("rows"))
        state["grid_pasted"] = int(report.get("pasted") or 0)
    rows = state["grid_rows"]
    fingerprint = grid_fingerprint(rows)
    cached = state.get("grid_parse")
    if cached and cached[0] == fingerprint:
        result: GridParse = cached[1]
    else:
        result = parse_grid(rows, max_rows=settings.max_rows_per_job)
        state["grid_parse"] = (fingerprint, result)

    st.caption(
        "Copy the **Product Number** and **Image URL** columns in Excel or Google Sheets "
        "(with or without the header row), click a cell below and press Ctrl+V / ⌘V. "
        "Cells stay editable; ✕ deletes a row; a new row appears as you fill the last one."
    )
    _grid.paste_grid(key, state["grid_seed"], result.invalid if result.parsed else None)
    left, right = st.columns([3, 1], vertical_alignment="center")
    left.caption(f"{len(rows):,} filled row(s) in the grid.")
    right.button(
        "Clear the grid",
        icon=":material/delete_sweep:",
        on_click=_clear_grid,
        disabled=not rows,
        width="stretch",
    )
    if len(rows) > _grid.GRID_COMFORT_ROWS:
        st.warning(
            f"This grid holds {len(rows):,} rows, more than it shows comfortably "
            f"({_grid.GRID_COMFORT_ROWS:,}). Everything is kept and will be queued, but for "
            "lists this long the file uploader is faster: save the sheet as CSV or XLSX.",
            icon=":material/speed:",
        )
        st.button("Use the file uploader instead", on_click=_use_file_uploader)
    if result.error:
        st.error(common.md_text(result.error, 1000))
    return result.parsed, "pasted rows", result.row_numbers


def _column_mapping(parsed: ParsedInput, scope: str) -> None:
    """Dropdowns to choose the product and URL columns (opened when detection is unsure)."""
    columns = list(parsed.columns)
    if len(columns) < 2:
        return
    url_options = columns if parsed.url_column in columns else [parsed.url_column or "", *columns]
    with st.expander("Columns", expanded=parsed.ambiguous, icon=":material/view_column:"):
        if parsed.ambiguous:
            st.warning(
                "The columns could not be told apart for sure. Check which column holds the "
                "product number and which the image URL.",
                icon=":material/help:",
            )
        left, right = st.columns(2)
        left.selectbox(
            "Product number column",
            columns,
            index=columns.index(parsed.product_column) if parsed.product_column in columns else 0,
            key=f"map-{scope}-product",
        )
        right.selectbox(
            "Image URL column",
            url_options,
            index=url_options.index(parsed.url_column) if parsed.url_column in url_options else 0,
            key=f"map-{scope}-url",
        )


def _overrides(scope: str) -> dict[str, str | None]:
    return {
        "product_column": state.get(f"map-{scope}-product"),
        "url_column": state.get(f"map-{scope}-url"),
    }


def _parse_cached(scope: str, parse: object) -> ParsedInput | None:
    """Parse once per (input, choices); show an unusable input's reason."""
    overrides = _overrides(scope)
    cache_key = (scope, overrides["product_column"], overrides["url_column"])
    cached = state.get("parse_cache")
    if cached and cached[0] == cache_key:
        outcome = cached[1]
    else:
        try:
            outcome = parse(**overrides)  # type: ignore[operator]
        except InputError as exc:
            if overrides["product_column"] or overrides["url_column"]:
                try:  # the chosen columns may not exist in a changed input
                    outcome = parse(product_column=None, url_column=None)  # type: ignore[operator]
                except InputError as again:
                    outcome = str(again)
            else:
                outcome = str(exc)
        state["parse_cache"] = (cache_key, outcome)
    if isinstance(outcome, str):  # quotes the file name and the input: shown as text
        st.error(common.md_text(outcome, 1000), icon=":material/error:")
        return None
    _column_mapping(outcome, scope)
    return outcome


def file_source() -> tuple[ParsedInput | None, str, None]:
    upload = st.file_uploader(
        "CSV, TSV or Excel file",
        type=["csv", "tsv", "txt", "xlsx"],
        key="upload",
        max_upload_size=settings.max_upload_mb,
        help="The first sheet row may be a header (Product Number, Image URL, SKU, Image Src, "
        "…). Wide layouts (Image 1, Image 2, …) and a Shopify product export work as they are.",
    )
    if upload is None:
        return None, "", None
    data = upload.getvalue()
    try:
        sheets = sheet_names(data, upload.name) if upload.name.lower().endswith(".xlsx") else []
    except InputError as exc:  # a damaged workbook, a zip bomb: its reason, not a traceback
        st.error(common.md_text(str(exc), 1000), icon=":material/error:")
        return None, "", None
    sheet = (
        st.selectbox("Sheet", sheets, key=f"sheet-{upload.file_id}") if len(sheets) > 1 else None
    )
    scope = f"file-{upload.file_id}-{sheet or ''}"

    def parse(product_column: str | None, url_column: str | None) -> ParsedInput:
        return parse_bytes(
            data,
            upload.name,
            sheet=sheet,
            product_column=product_column,
            url_column=url_column,
            max_rows=settings.max_rows_per_job,
        )

    return _parse_cached(scope, parse), upload.name, None


def text_source() -> tuple[ParsedInput | None, str, None]:
    text = st.text_area(
        "Rows copied from a sheet (tab separated) or CSV text",
        key="paste_text",
        height=240,
        placeholder="Product Number\tImage URL\nABC-100\thttps://…/front.jpg",
        help="Works for any size; the same parser as the file uploader.",
    )
    if not text.strip():
        return None, "", None
    scope = "text-" + hashlib.sha256(text.encode()).hexdigest()[:16]

    def parse(product_column: str | None, url_column: str | None) -> ParsedInput:
        return parse_text(
            text,
            product_column=product_column,
            url_column=url_column,
            max_rows=settings.max_rows_per_job,
        )

    return _parse_cached(scope, parse), "pasted text", None


# ---------------------------------------------------------------- preview and queue


def preview(parsed: ParsedInput, row_numbers: dict[int, int] | None) -> None:
    row_label = "Grid row" if row_numbers is not None else "Row"

    def shown_row(row: int) -> int:
        return row_numbers.get(row, row) if row_numbers is not None else row

    cols = st.columns(4)
    cols[0].metric("Products", f"{parsed.products:,}")
    cols[1].metric("Images", f"{parsed.images:,}")
    cols[2].metric("Duplicates removed", f"{len(parsed.duplicates):,}")
    cols[3].metric("Rejected rows", f"{len(parsed.rejected):,}")
    if parsed.images:
        with st.expander("The first rows as they will be queued", expanded=parsed.ambiguous):
            first = parsed.frame.head(8)
            table = {
                row_label: [shown_row(int(r)) for r in first["source_row"]],
                "Product": first["product"],
                "#": first["position"],
                "Image URL": first["url"],
            }
            # Products come in order of first appearance: these are the job's first folders.
            products = list(dict.fromkeys(first["product"].tolist()))
            folders = dict(zip(products, unique_folder_names(products), strict=True))
            if any(folder != product for product, folder in folders.items()):
                table["Folder"] = [
                    "" if folders[p] == p else folders[p] for p in first["product"].tolist()
                ]
            st.dataframe(
                pd.DataFrame(table).pipe(common.redacted, "Image URL"),  # no credentials on screen
                hide_index=True,
                width="stretch",
            )
    if parsed.rejected:
        st.warning(
            f"{len(parsed.rejected):,} row(s) will be skipped; the other rows still run.",
            icon=":material/warning:",
        )
        frame = pd.DataFrame(
            [(shown_row(r.row), r.reason, r.product, r.url) for r in parsed.rejected[:5000]],
            columns=[row_label, "Reason", "Product", "URL"],
        ).pipe(common.redacted, "Reason", "URL")
        st.dataframe(frame, hide_index=True, width="stretch", height=min(400, 38 + 35 * len(frame)))
    if parsed.duplicates:
        with st.expander(f"Duplicate URLs removed ({len(parsed.duplicates):,})"):
            frame = pd.DataFrame(
                [(shown_row(r.row), r.reason, r.product, r.url) for r in parsed.duplicates[:5000]],
                columns=[row_label, "Reason", "Product", "URL"],
            ).pipe(common.redacted, "Reason", "URL")
            st.dataframe(frame, hide_index=True, width="stretch")


HEADERS_PLACEHOLDER = (
    "Referer: https://shop.example/\n"
    "shop.example | Cookie: session=…\n"
    "*.cdn.example | User-Agent: Mozilla/5.0 …"
)


def request_headers() -> jobs.RequestHeaders | None:
    """The "Advanced: request headers" box; None (problems shown by line) when unusable."""
    typed = bool(state.get("request_headers")) or bool(state.get("any_format"))
    with st.expander("Advanced: request headers", expanded=typed, icon=":material/tune:"):
        text = st.text_area(
            "Request headers, one a line",
            key="request_headers",
            height=120,
            placeholder=HEADERS_PLACEHOLDER,
            help="`Name: value` for every image, `HOST | Name: value` for one host (HOST:PORT "
            "for one port, *.DOMAIN for its subdomains). For hotlink protection (Referer), "
            "cookies, tokens, a browser-like User-Agent. Cookie and Authorization values are "
            "never shown again, nor written to manifests or logs; they go with the job.",
        )
        any_format = st.checkbox(
            "Any format the CDN prefers (WebP/AVIF)",
            key="any_format",
            help="By default the downloader asks for the original JPEG/PNG; CDNs that "
            "negotiate the format then send WebP or AVIF instead.",
        )
        try:
            return jobs.parse_header_text(text, any_format=any_format)
        except jobs.HeaderError as exc:
            for problem in exc.problems[:20]:  # names the line and header, never a value
                st.error(common.md_text(problem, 300), icon=":material/error:")
            return None


LAYOUT_LABELS = {"per-product": "A folder per product", "flat": "All files in one folder"}


def output_options(parsed: ParsedInput | None) -> JobOptions | None:
    """The "Output" section: the naming template and the ZIP layout (downloader.templates);
    None (the reason shown) when the template cannot name this input's images."""
    with st.expander("Output", icon=":material/folder_zip:"):
        template = st.text_input(
            "File names",
            key="naming",
            value=DEFAULT_NAMING,
            max_chars=200,
            help="`.{ext}` is added. Fields: `{product}` `{position}` `{original_name}` `{ext}` "
            "`{sha8}` and each other column of your input as `{column_name}` (lower-case, "
            "other characters as `_`: Variant Color → `{variant_color}`). Names that collide "
            "get -2, -3 ….",
        )
        layout = st.radio(
            "ZIP layout",
            list(LAYOUT_LABELS),
            format_func=LAYOUT_LABELS.__getitem__,
            key="layout",
            horizontal=True,
        )
        columns = parsed.extra_columns if parsed is not None else []
        if columns:
            st.caption(
                "Your other columns: "
                + ", ".join(f"`{{{column_field(name)}}}`" for name in columns)
            )
        try:
            check_template(template, columns, layout)
        except TemplateError as exc:
            st.error(common.md_text(str(exc), 600), icon=":material/error:")
            return None
        # conversion and marketplace checks beside the naming (pages/_outputs.py)
        return _outputs.conversion_controls(JobOptions(naming=template, layout=layout))


def queue(
    parsed: ParsedInput,
    name: str,
    source: str,
    headers: jobs.RequestHeaders | None,
    options: JobOptions | None = None,
) -> None:
    who = common.session_id()
    try:  # per person (not per browser session): downloader.identity
        jobs.check_owner_limits(
            services.db,
            person.owner,
            per_minute=settings.job_rate_limit_per_minute,
            max_active=settings.max_active_jobs_per_user,
        )
    except jobs.RateLimited as exc:
        st.error(str(exc), icon=":material/hourglass_top:")
        return
    with st.spinner(f"Queueing {parsed.images:,} images…"):
        job = jobs.create_job(
            services.db,
            parsed,
            name=name,
            source=source,
            created_by=who,
            owner=person.owner,
            request_headers=headers,
            options=options,
        )
    if state.get("source", GRID) == GRID:
        _clear_grid()
    common.open_job(job.id)


# ---------------------------------------------------------------- page

st.title("New job")
st.write(
    "Give it product numbers and image URLs; it downloads every image, checks it is really an "
    "image, and packs one ZIP per product (or one for everything)."
)

source = st.segmented_control(
    "Your rows", SOURCES, default=GRID, required=True, key="source", label_visibility="collapsed"
)
if source == FILE:
    parsed, described, row_numbers = file_source()
elif source == TEXT:
    parsed, described, row_numbers = text_source()
else:
    parsed, described, row_numbers = grid_source()

st.download_button(
    "Download sample CSV",
    data=sample_csv(),
    file_name="sample.csv",
    mime="text/csv",
    icon=":material/download:",
    on_click="ignore",
    type="tertiary",
)

st.subheader("Preview")
if parsed is None:
    st.info("Nothing to queue yet: paste rows, upload a file or paste text above.")
else:
    preview(parsed, row_numbers)

default_name = (
    f"{described} · {parsed.products:,} product{'s' if parsed.products != 1 else ''}"
    if parsed is not None
    else "pasted rows"
)
name = st.text_input("Job name (optional)", key="job_name", max_chars=200, placeholder=default_name)
headers = request_headers()
options = output_options(parsed)
can_queue = parsed is not None and parsed.images > 0 and headers is not None and options is not None
if st.button(
    "Analyze & Queue Downloads",
    type="primary",
    icon=":material/rocket_launch:",
    disabled=not can_queue,
    key="queue",
):
    assert parsed is not None
    queue(parsed, name.strip() or default_name, described, headers, options)
