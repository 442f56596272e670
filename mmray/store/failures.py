"""The failures table: inputs a pipeline stage could not use, with the reason.

Each :func:`record` call writes one Parquet file
``_failures/<stage>/<utc time>-<id>.parquet`` (append-only, never rewritten),
so stages running in parallel or rerun later never overwrite each other.
Columns: ``stage, item, patient_id, reason, details, recorded_utc, batch``;
``details`` is a JSON object holding any extra keys of the failure dicts.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import posixpath
import uuid

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mmray.errors import StoreError
from mmray.store import fsio, layout

REQUIRED = ("item", "patient_id", "reason")
COLUMNS = ["stage", "item", "patient_id", "reason", "details", "recorded_utc", "batch"]
SCHEMA = pa.schema([("stage", pa.string()), ("item", pa.string()), ("patient_id", pa.string()),
                    ("reason", pa.string()), ("details", pa.string()),
                    ("recorded_utc", pa.timestamp("us", tz="UTC")), ("batch", pa.string())])


def _row(stage: str, failure, i: int) -> dict:
    where = f"failures[{i}] of stage {stage!r}"
    if not isinstance(failure, dict):
        raise StoreError(f"{where}: expected a dict with keys {list(REQUIRED)}, "
                         f"got {type(failure).__name__}")
    missing = [k for k in REQUIRED if k not in failure]
    if missing:
        raise StoreError(f"{where}: missing key(s) {missing}; got {sorted(failure)}")
    if failure.get("stage", stage) != stage:
        raise StoreError(f"{where}: says stage {failure['stage']!r} but was recorded for "
                         f"stage {stage!r}")
    if not str(failure["reason"]).strip():
        raise StoreError(f"{where}: reason is empty; say why the item failed")
    extra = {k: v for k, v in failure.items() if k not in (*REQUIRED, "stage")}
    try:
        details = json.dumps(extra, sort_keys=True, default=str)
    except (TypeError, ValueError) as e:
        raise StoreError(f"{where}: extra keys cannot be stored as JSON: {e}") from e
    pid = failure["patient_id"]
    return {"stage": stage, "item": str(failure["item"]),
            "patient_id": None if pid is None else str(pid),
            "reason": str(failure["reason"]), "details": details}


def record(fs: pafs.FileSystem, root: str, stage: str, failures: list[dict]) -> int:
    """Append failures of ``stage``; returns how many were recorded."""
    layout.check_name(stage, what="stage")
    if isinstance(failures, dict) or not hasattr(failures, "__iter__"):
        raise StoreError(f"failures of stage {stage!r}: expected a list of dicts")
    rows = [_row(stage, f, i) for i, f in enumerate(failures)]
    if not rows:
        return 0
    now = dt.datetime.now(dt.timezone.utc)
    batch = uuid.uuid4().hex[:12]
    for r in rows:
        r["recorded_utc"], r["batch"] = now, batch
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    name = f"{now.strftime('%Y%m%dT%H%M%S%fZ')}-{batch}.parquet"
    fsio.put_bytes(fs, posixpath.join(root, layout.FAILURES_DIR, stage, name), buf.getvalue())
    return len(rows)


def read(fs: pafs.FileSystem, root: str, stage: str | None = None) -> pd.DataFrame:
    """All recorded failures (of one stage, or every stage), oldest first."""
    base = posixpath.join(root, layout.FAILURES_DIR)
    if stage is not None:
        layout.check_name(stage, what="stage")
        base = posixpath.join(base, stage)
    paths = sorted(i.path for i in fsio.files_under(fs, base) if i.path.endswith(".parquet"))
    if not paths:
        return SCHEMA.empty_table().to_pandas()
    tables = []
    for p in paths:
        with fs.open_input_file(p) as f:
            tables.append(pq.read_table(f, schema=SCHEMA))
    df = pa.concat_tables(tables).to_pandas()
    return df.sort_values(["recorded_utc", "batch"], kind="stable").reset_index(drop=True)
