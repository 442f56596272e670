"""The run report's page: sections with a table of contents, one self-contained HTML5 file.

Every section carries ``data-status``: ``filled`` (built from the run's
data), ``missing`` (an input is not there yet: the section says what and
which command makes it) or ``error`` (building it failed: the message is
shown, the rest of the report is still written).  Images are base64 PNG data
URIs, the style sheet is inline, nothing is fetched from elsewhere.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field

from mmray.errors import MmrayError
from mmray.report import render

STYLE = """
body{font-family:system-ui,sans-serif;margin:0 auto;padding:1.5em 2em;max-width:78em;color:#222;line-height:1.4}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
h3{margin-bottom:.3em}
nav ol{columns:2;padding-left:1.4em}nav a{text-decoration:none}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}th{background:#f3f3f3}
tr.flag td{background:#fde2e2}
img{max-width:100%}figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}
figcaption{font-size:.85em;color:#555;max-width:40em}
.missing{background:#fff6d6;border-left:4px solid #e0b400;padding:.5em .8em}
.error{background:#fde2e2;border-left:4px solid #c62828;padding:.5em .8em}
.meta{color:#555;font-size:.9em}code{background:#f4f4f4;padding:0 .25em}
"""


class InputMissing(MmrayError):
    """An input a section needs is not in the store yet; ``command`` makes it."""

    def __init__(self, what: str, command: str):
        super().__init__(what, command)
        self.what, self.command = what, command

    def __str__(self) -> str:
        return f"{self.what}; produce it with: {self.command}"


@dataclass
class Section:
    id: str
    title: str
    body: list[str] = field(default_factory=list)
    status: str = "filled"  # filled | missing | error

    def html(self) -> str:
        return (f'<section id="{self.id}" data-status="{self.status}"><h2>{html.escape(self.title)}</h2>'
                + "".join(self.body) + "</section>")


def missing_note(err: InputMissing) -> str:
    return (f'<p class="missing"><b>Missing:</b> {html.escape(err.what)}. Produce it with '
            f"<code>{html.escape(err.command)}</code>.</p>")


def error_note(err: BaseException) -> str:
    return (f'<p class="error"><b>This section could not be built:</b> '
            f"{html.escape(type(err).__name__)}: {html.escape(str(err))}</p>")


def png_img(data: bytes, *, alt: str) -> str:
    """An ``<img>`` of PNG bytes already drawn (e.g. the training job's ablation.png)."""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def figure(fig, *, alt: str, caption: str = "", attrs: dict[str, object] | None = None) -> str:
    """A matplotlib figure as ``<figure>``; ``attrs`` become ``data-*`` attributes (values the figure shows)."""
    extra = "".join(f' data-{k}="{html.escape(str(v))}"' for k, v in (attrs or {}).items())
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f"<figure{extra}>{render.img_tag(fig, alt=alt)}{cap}</figure>"


def para(text: str) -> str:
    """A paragraph of already-escaped HTML."""
    return f"<p>{text}</p>"


def page(*, title: str, meta: list[str], sections: list[Section]) -> str:
    toc = "".join(f'<li><a href="#{s.id}">{html.escape(s.title)}</a>'
                  + ("" if s.status == "filled" else f" <small>({s.status})</small>") + "</li>" for s in sections)
    head = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>")
    intro = f"<h1>{html.escape(title)}</h1>" + "".join(f'<p class="meta">{m}</p>' for m in meta)
    nav = f'<nav id="contents"><h2>Contents</h2><ol>{toc}</ol></nav>'
    return head + intro + nav + "".join(s.html() for s in sections) + "</body></html>"
