"""Prior knowledge in the feature store: tables that describe genes and proteins, not patients.

Feature groups hold one row per (patient, time); an interaction network or a
collection of gene sets has no patient, so it lives beside the groups (like
``_reports`` and ``_failures``)::

    _knowledge/<name>/<version>.parquet    the table; version = the first 16 hex digits of its SHA-256
    _knowledge/<name>/latest.json          {"version", "file", "rows", "sources", "params", "created_utc"}

``latest.json`` is written after the table, so a reader never sees a version
whose data is not there yet; identical content gets the identical version.
``sources`` is the lineage of the input files (checksums, source labels:
no path when pseudonymised), as in group manifests.  Names in use:
``interactions`` (``source, target, type, score``) and ``gene_sets``
(``set_name, description, gene``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import posixpath

import pandas as pd

from mmray.errors import StoreError
from mmray.store import fsio
from mmray.store.layout import check_name

KNOWLEDGE_DIR = "_knowledge"


def _base(store, name: str) -> tuple[object, str]:
    fs, root = store.filesystem
    return fs, posixpath.join(root, KNOWLEDGE_DIR, check_name(name, what="knowledge table"))


def write_knowledge(store, name: str, frame: pd.DataFrame, *, sources: list[dict] | None = None,
                    params: dict | None = None) -> str:
    """Write ``frame`` as the latest version of knowledge table ``name``; returns the version."""
    buf = io.BytesIO()
    frame.reset_index(drop=True).to_parquet(buf, index=False)
    blob = buf.getvalue()
    version = hashlib.sha256(blob).hexdigest()[:16]
    fs, base = _base(store, name)
    meta = {"version": version, "file": f"{version}.parquet", "rows": int(len(frame)), "sources": sources or [],
            "params": params or {}, "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    try:
        fsio.put_bytes(fs, posixpath.join(base, meta["file"]), blob)
        fsio.put_json(fs, posixpath.join(base, "latest.json"), meta)
    except OSError as e:
        raise StoreError(f"cannot write knowledge table {name!r} under {store.uri}: {e}") from e
    return version


def knowledge_meta(store, name: str) -> dict | None:
    """``latest.json`` of knowledge table ``name``, or None when the store has none."""
    fs, base = _base(store, name)
    try:
        return fsio.get_json(fs, posixpath.join(base, "latest.json"))
    except (FileNotFoundError, OSError):
        return None


def read_knowledge(store, name: str) -> tuple[pd.DataFrame, dict]:
    """``(table, meta)`` of the latest version; :class:`StoreError` naming the command when absent."""
    meta = knowledge_meta(store, name)
    if meta is None:
        raise StoreError(f"no {name!r} knowledge table in {store.uri}; run `mmray ingest --modalities knowledge` "
                         f"on a cohort with an 'interactions' or 'signatures' part")
    fs, base = _base(store, name)
    try:
        with fs.open_input_file(posixpath.join(base, meta["file"])) as f:
            return pd.read_parquet(io.BytesIO(f.read())), meta
    except OSError as e:
        raise StoreError(f"knowledge table {name!r} version {meta['version']}: cannot read its data under "
                         f"{store.uri}: {e}") from e
