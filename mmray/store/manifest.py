"""Manifests: what a version holds and where it came from (lineage).

A manifest is a JSON object written as ``<group>/<version>/_manifest.json``
after every data file of the version landed; its presence commits the version.
Fields::

    format          1
    group, version  "expression", "v0002"
    kind            "table" | "bag"
    key_columns     ["patient_id", "event_time"]
    bag_key         column naming a bag (bag groups), else null
    created_utc     "2024-05-01T12:00:00.123456+00:00"
    num_rows        rows over all files
    num_bags        distinct bags (bag groups), else null
    columns         [{"name": ..., "type": ...}] (Arrow types as text)
    arrow_schema    the exact Arrow schema, IPC-serialised, base64
    files           [{"path", "num_rows", "size_bytes"}] relative to the version folder;
                    a file carried forward from an earlier version of the group is listed
                    as "../v0001/NAME.parquet" with "carried_from": "v0001"
    bag_index       "_bag_index.parquet" (bag groups), else null
    sources         [{"uri", "size_bytes", "sha256" | "etag"}] (see mmray.uri.checksum)
    params          JSON object given by the writer
    mmray_version   mmray.__version__
    git_revision    commit of the mmray checkout, null when not in a git checkout
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import subprocess
from pathlib import Path

import pyarrow as pa

import mmray
from mmray import uri as uri_mod
from mmray.errors import StoreError
from mmray.store.layout import KEY_COLUMNS
from mmray.store.parts import schema_from_text, schema_to_text

FORMAT = 1


@functools.lru_cache(maxsize=1)
def git_revision() -> str | None:
    """The commit of the checkout mmray is imported from; ``None`` when there is none."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(mmray.__file__).parent,
                             capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    rev = out.stdout.strip()
    return rev if len(rev) >= 7 else None


def check_params(params, *, where: str) -> dict:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise StoreError(f"{where}: params must be a dict, got {type(params).__name__}")
    try:
        return json.loads(json.dumps(params, sort_keys=True))
    except (TypeError, ValueError) as e:
        raise StoreError(f"{where}: params must be JSON-serialisable (str, numbers, bools, "
                         f"None, lists, dicts): {e}") from e


def describe_sources(sources, *, where: str) -> list[dict]:
    """Checksum every source: a path/URI (a folder means every file in it) or a dict
    already holding ``uri`` plus ``sha256`` or ``etag`` (passed through)."""
    if sources is None:
        return []
    if isinstance(sources, (str, os.PathLike, dict)):
        sources = [sources]
    out: list[dict] = []
    for src in sources:
        if isinstance(src, dict):
            if "uri" not in src or not ({"sha256", "etag"} & set(src)):
                raise StoreError(f"{where}: a source given as a dict needs 'uri' and 'sha256' "
                                 f"or 'etag', got keys {sorted(src)}")
            out.append(dict(src))
            continue
        try:
            for file_uri in uri_mod.list_files(src):
                out.append(uri_mod.checksum(file_uri))
        except FileNotFoundError as e:
            raise StoreError(f"{where}: source {str(src)!r} does not exist; sources are the "
                             f"files the features were computed from") from e
        except OSError as e:
            raise StoreError(f"{where}: cannot read source {str(src)!r}: {e}") from e
    return out


def build(*, group: str, version: str, kind: str, bag_key: str | None, parts: list[dict],
          sources: list[dict], params: dict, num_bags: int | None,
          schema: pa.Schema) -> dict:
    return {
        "format": FORMAT,
        "group": group,
        "version": version,
        "kind": kind,
        "key_columns": list(KEY_COLUMNS),
        "bag_key": bag_key,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(),
        "num_rows": sum(p["num_rows"] for p in parts),
        "num_bags": num_bags,
        "columns": [{"name": f.name, "type": str(f.type)} for f in schema],
        "arrow_schema": schema_to_text(schema),
        "files": [{k: p[k] for k in ("path", "num_rows", "size_bytes", "carried_from") if k in p}
                  for p in parts],
        "bag_index": "_bag_index.parquet" if kind == "bag" else None,
        "sources": sources,
        "params": params,
        "mmray_version": mmray.__version__,
        "git_revision": git_revision(),
    }


def schema_of(manifest: dict) -> pa.Schema:
    return schema_from_text(manifest["arrow_schema"])


def unify(parts: list[dict], *, where: str) -> pa.Schema:
    """The one schema of all parts (null-typed columns may widen); raises on a conflict."""
    schemas = [schema_from_text(p["schema"]) for p in parts]
    first = schemas[0]
    if all(s.equals(first) for s in schemas[1:]):
        return first
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        odd = next(p["path"] for p, s in zip(parts, schemas) if not s.equals(first))
        raise StoreError(f"{where}: part {odd!r} has columns/types that do not match part "
                         f"{parts[0]['path']!r} ({e}); all parts of a version share one "
                         f"schema") from e
