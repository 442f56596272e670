"""``mmray view --store S``: a slide viewer for pathologists (Deep Zoom tiles + switchable overlays).

One HTTP server (Python's ``ThreadingHTTPServer``: a handful of users on a
workstation or behind the cluster's proxy; no framework needed for six
routes) serves

=====================================  ==========================================================
``/``                                  the page (``viewer_static/index.html`` + ``viewer.js``)
``/static/...``                        the page's files and the vendored OpenSeadragon
``/api/patients``                      patients, their slides, the overlays the store can draw
``/dzi/<slide>.dzi``                   the Deep Zoom descriptor (``openslide.deepzoom``)
``/dzi/<slide>_files/<l>/<c>_<r>.jpeg`` one Deep Zoom tile
``/api/overlay/<slide>/<kind>``        an overlay as QuPath GeoJSON (``?download=1``: as a file)
=====================================  ==========================================================

Slides are named by their store ids (pseudonyms in a pseudonymised store);
the slide file behind an id is looked up on the server
(:mod:`mmray.report.viewer_data`) and never sent, logged or shown.  Bind
to 127.0.0.1 (the default); a shared host should sit behind an
authenticating proxy.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import posixpath
import re
import shutil
import tempfile
import threading
from collections import OrderedDict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from mmray import uri as uri_mod
from mmray.report.viewer_data import OVERLAYS, ViewerData

log = logging.getLogger("mmray.view")
STATIC = Path(__file__).parent / "viewer_static"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".png": "image/png",
         ".css": "text/css; charset=utf-8", ".txt": "text/plain; charset=utf-8", ".md": "text/plain; charset=utf-8"}
_TILE = re.compile(r"^/dzi/(?P<slide>[^/]+)_files/(?P<level>\d+)/(?P<col>\d+)_(?P<row>\d+)\.(?P<fmt>jpeg|png)$")
_DZI = re.compile(r"^/dzi/(?P<slide>[^/]+)\.dzi$")
_OVERLAY = re.compile(r"^/api/overlay/(?P<slide>[^/]+)/(?P<kind>[a-z]+)(?:\.geojson)?$")


class SlideCache:
    """Open slides and their ``DeepZoomGenerator`` (a few at a time; ``s3://`` slides copied to scratch first)."""

    def __init__(self, uris: dict[str, str], *, size: int = 8, tile_px: int = 254, overlap_px: int = 1):
        self.uris, self.size, self.tile_px, self.overlap_px = uris, size, tile_px, overlap_px
        self._open: OrderedDict[str, tuple] = OrderedDict()
        self._lock = threading.Lock()
        self._scratch = tempfile.mkdtemp(prefix="mmray-view-")

    def get(self, slide_id: str):
        from openslide.deepzoom import DeepZoomGenerator

        from mmray.ingest.slide_source import local_copy, open_slide

        with self._lock:
            if slide_id in self._open:
                self._open.move_to_end(slide_id)
                return self._open[slide_id][1]
            uri = self.uris.get(slide_id)
            if uri is None:
                raise KeyError(slide_id)
            path = local_copy(uri, scratch_dir=self._scratch if uri_mod.is_s3(uri) else "")
            slide = open_slide(path, name=slide_id)
            dz = DeepZoomGenerator(slide, tile_size=self.tile_px, overlap=self.overlap_px, limit_bounds=False)
            self._open[slide_id] = (slide, dz)
            while len(self._open) > self.size:
                _, (old, _) = self._open.popitem(last=False)
                old.close()
            return dz

    def close(self) -> None:
        with self._lock:
            for slide, _ in self._open.values():
                slide.close()
            self._open.clear()
        shutil.rmtree(self._scratch, ignore_errors=True)


def make_handler(data: ViewerData, slides: SlideCache):
    class Handler(BaseHTTPRequestHandler):
        server_version = "mmray-view"

        def log_message(self, fmt, *args):  # the request line names only store ids: fine for the log file
            log.debug("%s %s", self.address_string(), fmt % args)

        def _send(self, status: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store" if ctype.startswith("application/json") else "max-age=300")
            self.send_header("X-Content-Type-Options", "nosniff")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, obj, status: int = 200, headers: dict | None = None) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json", headers)

        def _error(self, status: int, message: str) -> None:
            self._json({"error": message}, status)

        def do_HEAD(self):  # noqa: N802
            self.do_GET()

        def do_GET(self):  # noqa: N802
            url = urlparse(self.path)
            path = unquote(url.path)
            try:
                if path in ("/", "/index.html"):
                    return self._static("index.html")
                if path.startswith("/static/"):
                    return self._static(path[len("/static/"):])
                if path == "/api/patients":
                    return self._json({"patients": data.patients(), "overlays": data.overlays(),
                                       "labels": {k: v[0] for k, v in OVERLAYS.items()}})
                m = _DZI.match(path)
                if m:
                    dzi = slides.get(m["slide"]).get_dzi("jpeg")
                    return self._send(200, dzi.encode(), "application/xml")
                m = _TILE.match(path)
                if m:
                    return self._tile(m)
                m = _OVERLAY.match(path)
                if m:
                    if m["kind"] not in OVERLAYS:
                        return self._error(404, f"unknown overlay {m['kind']!r}; overlays: {sorted(OVERLAYS)}")
                    body = data.overlay(m["slide"], m["kind"])
                    headers = {}
                    if parse_qs(url.query).get("download") or path.endswith(".geojson"):
                        headers["Content-Disposition"] = f'attachment; filename="{m["slide"]}_{m["kind"]}.geojson"'
                    return self._json(body, headers=headers)
                return self._error(404, "not found")
            except KeyError:
                return self._error(404, "unknown slide, or its file is not in the store's records (pass --cohort)")
            except (BrokenPipeError, ConnectionResetError):
                return None
            except Exception as e:  # noqa: BLE001  one bad request must not stop the server; no path in the answer
                log.warning("view: %s failed: %s", path, type(e).__name__)
                log.debug("view: %s", e)
                return self._error(500, f"{type(e).__name__} while serving this request (details in the log file)")

        def _static(self, rel: str):
            target = (STATIC / posixpath.normpath(rel).lstrip("/")).resolve()
            if STATIC.resolve() not in target.parents or not target.is_file():
                return self._error(404, "not found")
            return self._send(200, target.read_bytes(), TYPES.get(target.suffix, "application/octet-stream"))

        def _tile(self, m):
            dz = slides.get(m["slide"])
            level, col, row = int(m["level"]), int(m["col"]), int(m["row"])
            if level >= dz.level_count:
                return self._error(404, "no such level")
            cols, rows = dz.level_tiles[level]
            if col >= cols or row >= rows:
                return self._error(404, "no such tile")
            tile = dz.get_tile(level, (col, row))
            buf = io.BytesIO()
            fmt = "JPEG" if m["fmt"] == "jpeg" else "PNG"
            tile.convert("RGB").save(buf, fmt, quality=85) if fmt == "JPEG" else tile.save(buf, fmt)
            return self._send(200, buf.getvalue(), f"image/{m['fmt']}")

    return Handler


@contextlib.contextmanager
def viewer_server(data: ViewerData, *, host: str = "127.0.0.1", port: int = 8000):
    """A running viewer server (in a thread) for ``data``; yields ``(server, url)``."""
    slides = SlideCache(data.uris)
    server = ThreadingHTTPServer((host, port), make_handler(data, slides))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="mmray-view", daemon=True)
    thread.start()
    try:
        yield server, f"http://{host}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        slides.close()


def viewer_data(store: str, *, cohort: str | None = None, train_run: str | None = None) -> ViewerData:
    """The store's slides with their files found through its records (see :mod:`mmray.report.viewer_data`)."""
    from mmray.report.inputs import slide_uris
    from mmray.store import FeatureStore

    st = FeatureStore(store)
    manifest = None
    if cohort:
        from mmray.cohort import load_cohort

        manifest = load_cohort(cohort).manifest()
    return ViewerData(st, uris=slide_uris(st, manifest), train_run=train_run)
