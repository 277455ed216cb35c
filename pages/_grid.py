"""The paste grid of the New job page: an editable AgGrid (Community edition only).

AG Grid's clipboard module is Enterprise-only, so a `paste` listener registered in onGridReady
parses the TSV that Excel / Google Sheets put on the clipboard and adds the rows with
`applyTransaction`. Every row carries a unique id (`rid`, hidden; `getRowId` reads it), so rows
added in the browser never collide. The grid sends its rows back only after a change has
settled (a paste, a finished cell edit, a deleted row; debounced), as a compact list built by a
custom return function: typing in a cell never round-trips the grid, and the data handed to
the grid stays the same between reruns, so the browser keeps its rows.

Invalid cells are highlighted from the grid's `context` (row id -> reason), which the page
updates after each parse; a reason shows as the cell's tooltip.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from st_aggrid import AgGrid, DataReturnMode, JsCode

from downloader.ui_queries import GRID_PRODUCT, GRID_URL, clean_grid_rows, header_synonyms

#: More rows than this and the page suggests the file uploader (the grid still works).
GRID_COMFORT_ROWS = 5_000
#: Blank rows a fresh grid starts with, so there are cells to click and paste into.
BLANK_ROWS = 8

# Note: JsCode collapses the code onto one line and strips `//` comments, so the code below
# ends every statement with a semicolon and uses no `//` comments.
_ON_GRID_READY = r"""
function (event) {
  var api = event.api;
  window.__bidApi = api;
  window.__bidDirty = false;
  var seq = 0;
  function ctx() { return api.getGridOption('context') || {}; }
  function newId() { seq += 1; return 'b' + Date.now().toString(36) + '_' + seq; }
  function text(v) { return v === null || v === undefined ? '' : String(v); }
  function isBlank(d) { return !d || (!text(d.product).trim() && !text(d.url).trim()); }
  function norm(s) { return text(s).toLowerCase().replace(/[^a-z0-9]/g, ''); }
  function headerKind(cell) {
    var syn = ctx().synonyms || {product: [], url: []};
    var n = norm(cell);
    if (!n) { return ''; }
    if (syn.product.indexOf(n) >= 0) { return 'product'; }
    if (syn.url.indexOf(n) >= 0) { return 'url'; }
    if (/^(imagesrc|imageurl|image|variantimage|url)[0-9]+$/.test(n)) { return 'url'; }
    return '';
  }
  function looksLikeUrl(s) { return /^\s*https?:\/\S/i.test(text(s)); }
  function parseTsv(raw) {
    var rows = [], row = [], cell = '', quoted = false, i = 0, c;
    var src = raw.replace(/\r\n?/g, '\n');
    while (i < src.length) {
      c = src.charAt(i);
      if (quoted) {
        if (c === '"') {
          if (src.charAt(i + 1) === '"') { cell += '"'; i += 2; continue; }
          quoted = false; i += 1; continue;
        }
        cell += c; i += 1; continue;
      }
      if (c === '"' && cell === '') { quoted = true; i += 1; continue; }
      if (c === '\t') { row.push(cell); cell = ''; i += 1; continue; }
      if (c === '\n') { row.push(cell); rows.push(row); row = []; cell = ''; i += 1; continue; }
      cell += c; i += 1;
    }
    if (cell !== '' || row.length) { row.push(cell); rows.push(row); }
    while (rows.length && rows[rows.length - 1].join('').trim() === '') { rows.pop(); }
    return rows;
  }
  function ensureBlankRow() {
    var n = api.getDisplayedRowCount();
    var last = n > 0 ? api.getDisplayedRowAtIndex(n - 1) : null;
    if (!last || !isBlank(last.data)) {
      api.applyTransaction({add: [{rid: newId(), product: '', url: ''}]});
    }
  }
  function changed() { window.__bidDirty = true; }
  window.__bidChanged = changed;
  window.__bidEnsureBlank = ensureBlankRow;
  function firstFreeRow() {
    var n = api.getDisplayedRowCount();
    var i = n;
    while (i > 0 && isBlank(api.getDisplayedRowAtIndex(i - 1).data)) { i -= 1; }
    return i;
  }
  function onPaste(e) {
    var cd = e.clipboardData || window.clipboardData;
    if (!cd) { return; }
    var raw = cd.getData('text/plain') || cd.getData('text');
    if (!raw) { return; }
    var multi = /[\t\n\r]/.test(raw.replace(/[\r\n]+$/, ''));
    var editing = api.getEditingCells().length > 0;
    if (editing && !multi) { return; }
    e.preventDefault();
    e.stopPropagation();
    if (editing) { api.stopEditing(true); }
    var rows = parseTsv(raw);
    if (!rows.length) { return; }
    var focused = api.getFocusedCell();
    var focusCol = focused && focused.column ? focused.column.getColId() : 'product';
    var header = rows[0].map(headerKind);
    var hasHeader = header.some(function (k) { return k !== ''; }) && !rows[0].some(looksLikeUrl);
    var body = hasHeader ? rows.slice(1) : rows;
    var productIdx = -1, urlIdx = [], j;
    if (hasHeader) {
      productIdx = header.indexOf('product');
      for (j = 0; j < header.length; j++) { if (header[j] === 'url') { urlIdx.push(j); } }
      if (productIdx < 0 && header.length > 1) {
        for (j = 0; j < header.length; j++) {
          if (urlIdx.indexOf(j) < 0) { productIdx = j; break; }
        }
      }
      if (!urlIdx.length && header.length > 1) {
        for (j = 0; j < header.length; j++) { if (j !== productIdx) { urlIdx.push(j); break; } }
      }
    } else if (focusCol === 'url') {
      urlIdx = [0];
      for (j = 1; j < rows[0].length; j++) { urlIdx.push(j); }
    } else {
      productIdx = 0;
      if (rows[0].length > 1) { urlIdx.push(1); }
      for (j = 2; j < rows[0].length; j++) {
        if (body.some(function (r) { return looksLikeUrl(r[j]); })) { urlIdx.push(j); }
      }
    }
    var start = focused && focused.rowIndex !== null && focused.rowIndex !== undefined &&
      focused.rowPinned == null ? focused.rowIndex : firstFreeRow();
    var count = api.getDisplayedRowCount();
    var updates = [], adds = [];
    for (var i = 0; i < body.length; i++) {
      var r = body[i], vals = {};
      if (productIdx >= 0) { vals.product = text(r[productIdx]).trim(); }
      if (urlIdx.length) {
        vals.url = urlIdx.map(function (k) { return text(r[k]).trim(); })
          .filter(function (s) { return s !== ''; }).join(' ');
      }
      var at = start + i;
      if (at < count) {
        var node = api.getDisplayedRowAtIndex(at);
        updates.push(Object.assign({}, node.data, vals));
      } else {
        adds.push(Object.assign({rid: newId(), product: '', url: ''}, vals));
      }
    }
    api.applyTransaction({update: updates, add: adds});
    ensureBlankRow();
    window.__bidLastPaste = body.length;
    changed();
    api.ensureIndexVisible(start, 'top');
  }
  document.addEventListener('paste', onPaste, true);
  api.addEventListener('cellValueChanged', function () { changed(); ensureBlankRow(); });
  api.addEventListener('gridOptionsChanged', function () {
    api.refreshCells({force: true, columns: ['product', 'url']});
  });
  window.__bidReady = true;
}
"""

_DELETE_RENDERER = r"""
class DeleteRowRenderer {
  init(params) {
    var button = document.createElement('button');
    button.className = 'bid-del';
    button.type = 'button';
    button.title = 'Delete this row';
    button.setAttribute('aria-label', 'Delete row');
    button.textContent = '\u2715';
    button.addEventListener('click', function (ev) {
      ev.stopPropagation();
      params.api.applyTransaction({remove: [params.node.data]});
      if (window.__bidEnsureBlank) { window.__bidEnsureBlank(); }
      if (window.__bidChanged) { window.__bidChanged(); }
    });
    this.eGui = button;
  }
  getGui() { return this.eGui; }
  refresh() { return false; }
}
"""

_RETURN = r"""
function (args) {
  var api = args.eventData.api || window.__bidApi;
  var rows = [];
  api.forEachNodeAfterFilterAndSort(function (n) {
    var d = n.data || {};
    var p = d.product === null || d.product === undefined ? '' : String(d.product);
    var u = d.url === null || d.url === undefined ? '' : String(d.url);
    if (p.trim() || u.trim()) { rows.push([n.rowIndex, String(d.rid), p, u]); }
  });
  window.__bidVersion = (window.__bidVersion || 0) + 1;
  return {rows: rows, version: window.__bidVersion, pasted: window.__bidLastPaste || 0};
}
"""

_SHOULD_RETURN = r"""
function (args) {
  if (!window.__bidDirty) { return false; }
  window.__bidDirty = false;
  return true;
}
"""


def _cell_rules(column: str) -> dict[str, Any]:
    lookup = f"var c = p.context || {{}}; var bad = (c.invalid || {{}})['{column}'] || {{}};"
    test = f"function (p) {{ {lookup} return !!(p.data && bad.hasOwnProperty(p.data.rid)); }}"
    tip = (
        f"function (p) {{ {lookup} "
        "return p.data && bad.hasOwnProperty(p.data.rid) ? bad[p.data.rid] : undefined; }"
    )
    return {"cellClassRules": {"bid-invalid": JsCode(test)}, "tooltipValueGetter": JsCode(tip)}


_CSS = {
    ".bid-invalid": {
        "background-color": "rgba(255, 43, 43, 0.14) !important",
        "color": "#b3261e !important",
        "text-decoration": "underline wavy rgba(255, 43, 43, 0.8)",
        "text-underline-offset": "3px",
    },
    ".bid-del": {
        "border": "none",
        "background": "transparent",
        "cursor": "pointer",
        "opacity": "0.55",
        "font-size": "14px",
        "padding": "0 6px",
    },
    ".bid-del:hover": {"opacity": "1", "color": "#d33"},
    ".bid-rownum": {"color": "#888", "text-align": "right"},
}


def seed_frame(rows: list[tuple[int, str, str, str]] | None = None) -> pd.DataFrame:
    """What a (re)mounted grid starts with: the rows it had, then blank rows to paste into."""
    rows = rows or []
    records = [{"rid": rid, "product": product, "url": url} for _, rid, product, url in rows]
    blanks = BLANK_ROWS if not records else 1
    records += [
        {"rid": f"blank-{len(records)}-{i}", "product": "", "url": ""} for i in range(blanks)
    ]
    return pd.DataFrame(records, columns=["rid", "product", "url"], dtype=object)


def grid_options(invalid: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    return {
        "columnDefs": [
            {"field": "rid", "hide": True},
            {
                "headerName": "#",
                "colId": "rownum",
                "valueGetter": JsCode("function (p) { return p.node.rowIndex + 1; }"),
                "width": 70,
                "maxWidth": 80,
                "editable": False,
                "cellClass": "bid-rownum",
                "suppressNavigable": True,
            },
            {
                "field": "product",
                "headerName": GRID_PRODUCT,
                "editable": True,
                "flex": 1,
                "minWidth": 160,
                **_cell_rules("product"),
            },
            {
                "field": "url",
                "headerName": GRID_URL,
                "editable": True,
                "flex": 3,
                "minWidth": 240,
                **_cell_rules("url"),
            },
            {
                "headerName": "",
                "colId": "delete",
                "width": 56,
                "maxWidth": 56,
                "editable": False,
                "suppressNavigable": True,
                "cellRenderer": JsCode(_DELETE_RENDERER),
            },
        ],
        "defaultColDef": {
            "sortable": False,
            "filter": False,
            "resizable": True,
            "suppressMovable": True,
            "suppressHeaderMenuButton": True,
        },
        "getRowId": JsCode("function (p) { return String(p.data.rid); }"),
        "onGridReady": JsCode(_ON_GRID_READY),
        "context": {"synonyms": header_synonyms(), "invalid": invalid or {}},
        "stopEditingWhenCellsLoseFocus": True,
        "enterNavigatesVertically": True,
        "enterNavigatesVerticallyAfterEdit": True,
        "undoRedoCellEditing": True,
        "tooltipShowDelay": 150,
        "rowHeight": 32,
        "animateRows": False,
    }


def paste_grid(
    key: str, seed: pd.DataFrame, invalid: dict[str, dict[str, str]] | None, height: int = 360
) -> dict[str, Any] | None:
    """Show the grid; return its last report {rows, version, pasted} (None before any change)."""
    response = AgGrid(
        seed,
        gridOptions=grid_options(invalid),
        key=key,
        height=height,
        data_return_mode=DataReturnMode.CUSTOM,
        custom_jscode_for_grid_return=JsCode(_RETURN),
        should_grid_return=JsCode(_SHOULD_RETURN),
        update_on=[("cellValueChanged", 400), ("rowDataUpdated", 400)],
        allow_unsafe_jscode=True,
        enable_enterprise_modules=False,
        custom_css=_CSS,
        show_toolbar=False,
        theme="streamlit",
    )
    raw = getattr(response, "raw_data", None)
    if not isinstance(raw, dict):
        return None
    return {
        "rows": clean_grid_rows(raw.get("rows")),
        "version": raw.get("version"),
        "pasted": int(raw.get("pasted") or 0),
    }
