"""Key columns: validation and normalisation at write (and join) time.

Every row of every feature group is keyed by ``patient_id`` (string, never
null or empty; integer ids become their decimal text) and ``event_time``, stored as ``timestamp[us, tz=UTC]``. Inputs may be
timestamps (naive ones are taken as UTC, aware ones are converted to UTC),
dates (midnight UTC), or strings that pandas parses (ISO 8601 preferred);
sub-microsecond precision is truncated. Integers are refused: their unit is
ambiguous.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mmray.errors import StoreError

EVENT_TIME_TYPE = pa.timestamp("us", tz="UTC")
# Event time of features whose source carries no date (a slide without an
# acquisition date, an expression matrix): before any label time, so the
# point-in-time join always admits them.
UNDATED = pd.Timestamp("1970-01-01", tz="UTC")


def to_arrow(data, *, where: str) -> pa.Table:
    """A ``pa.Table`` from a pandas DataFrame or Arrow table (pandas metadata dropped)."""
    if isinstance(data, pd.DataFrame):
        try:
            table = pa.Table.from_pandas(data, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise StoreError(f"{where}: cannot convert the DataFrame to Arrow: {e}") from e
    elif isinstance(data, pa.RecordBatch):
        table = pa.Table.from_batches([data])
    elif isinstance(data, pa.Table):
        table = data
    else:
        raise StoreError(f"{where}: expected a pandas DataFrame or pyarrow Table, "
                         f"got {type(data).__name__}")
    return table.replace_schema_metadata(None)


def event_times(values, *, where: str) -> pa.Array:
    """Normalise event times (Arrow array/ChunkedArray or pandas Series) to UTC microseconds."""
    arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if len(arr) == 0:  # an empty pandas column has no meaningful dtype
        return pa.array([], EVENT_TIME_TYPE)
    t = arr.type
    try:
        if pa.types.is_timestamp(t) or pa.types.is_date(t):
            if pa.types.is_date(t):
                arr = arr.cast(pa.timestamp("us"))
            out = arr.cast(EVENT_TIME_TYPE, safe=False)
        elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t):
            parsed = pd.to_datetime(pd.Series(arr.to_pylist(), dtype=object), utc=True,
                                    format="mixed")
            out = pa.array(parsed.dt.as_unit("us"), type=EVENT_TIME_TYPE)
        else:
            raise StoreError(
                f"{where}: event_time must be timestamps, dates or date strings, got {t}; "
                f"convert numbers first, e.g. pd.to_datetime(x, unit='D', origin=...)")
    except (ValueError, pa.ArrowInvalid) as e:
        raise StoreError(f"{where}: cannot read event_time as dates ({e}); "
                         f"use ISO 8601 strings like '2021-03-04' or timestamps") from e
    nulls = out.null_count
    if nulls:
        raise StoreError(f"{where}: event_time has {nulls} missing value(s); every row needs "
                         f"the time its features describe")
    return out


def patient_ids(values, *, where: str) -> pa.Array:
    """Patient ids as non-empty strings (integer ids are turned into their decimal text)."""
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if len(arr) == 0:
        return pa.array([], pa.string())
    ok = (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer, pa.types.is_null)
    if not any(check(arr.type) for check in ok):
        raise StoreError(f"{where}: patient_id must be strings, got {arr.type}")
    arr = arr.cast(pa.string())
    if arr.null_count:
        raise StoreError(f"{where}: patient_id has {arr.null_count} missing value(s)")
    empty = pc.sum(pc.equal(arr, "")).as_py() or 0
    if empty:
        raise StoreError(f"{where}: patient_id has {empty} empty string(s)")
    return arr


def normalise(table: pa.Table, *, where: str, bag_key: str | None = None) -> pa.Table:
    """Check and normalise the key columns of one part; other columns pass unchanged."""
    needed = ["patient_id", "event_time"] + ([bag_key] if bag_key else [])
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise StoreError(
            f"{where}: missing key column(s) {missing}; got columns {table.column_names}. "
            f"If they are the DataFrame index, call df.reset_index() first")
    if len(set(table.column_names)) != len(table.column_names):
        raise StoreError(f"{where}: duplicate column names in {table.column_names}")
    table = table.set_column(table.column_names.index("patient_id"), "patient_id",
                             patient_ids(table["patient_id"], where=where))
    table = table.set_column(table.column_names.index("event_time"), "event_time",
                             event_times(table["event_time"], where=where))
    if bag_key and table[bag_key].null_count:
        raise StoreError(f"{where}: bag key column {bag_key!r} has "
                         f"{table[bag_key].null_count} missing value(s)")
    return table


def labels_frame(labels: pd.DataFrame, *, where: str = "labels") -> pd.DataFrame:
    """Validate a label (or feature) table; return a copy with normalised key columns."""
    if not isinstance(labels, pd.DataFrame):
        raise StoreError(f"{where}: expected a pandas DataFrame, got {type(labels).__name__}")
    missing = [c for c in ("patient_id", "event_time") if c not in labels.columns]
    if missing:
        raise StoreError(f"{where}: missing column(s) {missing}; got {list(labels.columns)}")
    out = labels.copy()
    out["patient_id"] = patient_ids(pa.array(out["patient_id"].tolist()),
                                    where=where).to_pandas().to_numpy()
    times = event_times(pa.array(out["event_time"], from_pandas=True), where=where)
    out["event_time"] = pd.Series(times.to_pandas().array, index=out.index)  # [us, UTC]
    return out
