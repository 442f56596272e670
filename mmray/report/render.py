"""Small pieces shared by the data reports: PNG plots, HTML pages, files in the store.

Reports live next to the feature groups, under ``<store>/_reports/<name>/``
(the leading underscore keeps them apart from group names, like
``_failures``): ``<UTC time>.json`` and ``<UTC time>.html`` per run, plus
``latest.json`` / ``latest.html`` rewritten each time.  Plots are drawn with
matplotlib's Agg renderer (no display, no pyplot state) and embedded in the
HTML as base64 PNG, so one file is the whole report.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import math
import posixpath

from mmray.errors import StoreError
from mmray.store import fsio

REPORTS_DIR = "_reports"


def new_figure(width_in: float, height_in: float):
    """A matplotlib Figure on the Agg canvas (never pyplot: safe in workers and tests)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def png_base64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def img_tag(fig, *, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{png_base64(fig)}">'


def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "&ndash;"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def table(rows: list[dict], columns: list[tuple[str, str]], *, mark=None) -> str:
    """An HTML table; ``columns``: (key, heading); ``mark(row)`` True -> row highlighted."""
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in columns)
    body = []
    for row in rows:
        cls = ' class="flag"' if mark and mark(row) else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{fmt(row.get(k))}</td>" for k, _ in columns) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def page(title: str, sections: list[str]) -> str:
    style = ("body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}th{background:#f3f3f3}"
             "tr.flag td{background:#fde2e2}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{''.join(sections)}</body></html>")


def write_report(store, name: str, report: dict, html_text: str) -> dict:
    """Write ``report`` (JSON) and its HTML under ``_reports/<name>/``; returns their URIs."""
    fs, root = store.filesystem
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    base = posixpath.join(root, REPORTS_DIR, name)
    blob = json.dumps(report, indent=2, sort_keys=True, default=str).encode()
    try:
        for stem in (stamp, "latest"):
            fsio.put_bytes(fs, posixpath.join(base, f"{stem}.json"), blob)
            fsio.put_bytes(fs, posixpath.join(base, f"{stem}.html"), html_text.encode())
    except OSError as e:
        raise StoreError(f"cannot write the {name} report under {store.uri}: {e}") from e
    prefix = store.uri.rstrip("/")
    return {"json": f"{prefix}/{REPORTS_DIR}/{name}/{stamp}.json",
            "html": f"{prefix}/{REPORTS_DIR}/{name}/{stamp}.html"}


def read_report(store, name: str) -> dict:
    """The latest ``name`` report of ``store`` as a dict."""
    fs, root = store.filesystem
    path = posixpath.join(root, REPORTS_DIR, name, "latest.json")
    try:
        return fsio.get_json(fs, path)
    except (FileNotFoundError, OSError) as e:
        raise StoreError(f"no {name} report in {store.uri} (looked for {path}); run mmray ingest with "
                         f"clinical labels first") from e
