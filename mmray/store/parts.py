"""Write one part (a Parquet file) of a version, and describe it for the manifest.

A part of a ``table`` group holds rows as given. A part of a ``bag`` group is
sorted by the bag key and holds one row group per bag, so that one bag is read
from its row group(s) alone; the returned record lists, per bag, the row group,
its row count, patient and event time (the manifest's bag index is built from
these records).
"""

from __future__ import annotations

import base64
import posixpath

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mmray.errors import StoreError
from mmray.store import fsio, keys
from mmray.store.layout import check_part_name


def schema_to_text(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def schema_from_text(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


def prepare(data, *, bag_key: str | None, where: str) -> pa.Table:
    """A DataFrame/Table as an Arrow table with checked, normalised key columns."""
    table = keys.normalise(keys.to_arrow(data, where=where), where=where, bag_key=bag_key)
    if table.num_rows == 0:
        raise StoreError(f"{where}: the part has no rows; skip empty parts")
    return table


def write_part(fs: pafs.FileSystem, version_path: str, table: pa.Table, *, part_name: str,
               bag_key: str | None, where: str) -> dict:
    """Write a :func:`prepare`-d table as ``<version_path>/<part_name>.parquet``.

    Returns the part record: ``{"path", "num_rows", "size_bytes", "schema", "bags"}``
    where ``path`` is relative to the version folder, ``schema`` is the Arrow
    schema serialised as base64 text and ``bags`` is ``[]`` for table groups.
    """
    check_part_name(part_name)
    rel = f"{part_name}.parquet"
    path = posixpath.join(version_path, rel)
    bags: list[dict] = []
    if bag_key:
        table = table.take(pc.sort_indices(table, sort_keys=[(bag_key, "ascending")]))
    with fsio.io_failure(where, doing=f"writing {fsio.display(fs, path)}"):
        fs.create_dir(version_path, recursive=True)
        with fs.open_output_stream(path) as sink:
            with pq.ParquetWriter(sink, table.schema) as writer:
                if bag_key:
                    for row_group, (start, stop) in enumerate(_runs(table[bag_key])):
                        piece = table.slice(start, stop - start)
                        writer.write_table(piece, row_group_size=piece.num_rows)
                        bags.append(_bag_record(piece, bag_key=bag_key, row_group=row_group,
                                                path=rel, where=where))
                else:
                    writer.write_table(table)
            size = sink.tell()
    return {"path": rel, "num_rows": table.num_rows, "size_bytes": int(size),
            "schema": schema_to_text(table.schema), "bags": bags}


def _runs(column: pa.ChunkedArray) -> list[tuple[int, int]]:
    """``[(start, stop)]`` of the runs of equal values in a sorted column."""
    values = column.combine_chunks()
    n = len(values)
    if n == 0:
        return []
    change = pc.not_equal(values.slice(1), values.slice(0, n - 1))
    starts = [0] + [i + 1 for i in pc.indices_nonzero(change).to_pylist()]
    return list(zip(starts, starts[1:] + [n]))


def _bag_record(piece: pa.Table, *, bag_key: str, row_group: int, path: str,
                where: str) -> dict:
    bag_id = str(piece[bag_key][0].as_py())
    record = {"bag_id": bag_id, "path": path, "row_group": row_group,
              "num_rows": piece.num_rows}
    for col in ("patient_id", "event_time"):
        distinct = pc.unique(piece[col])
        if len(distinct) != 1:
            raise StoreError(f"{where}: bag {bag_id!r} has {len(distinct)} different {col} "
                             f"values; all rows of one {bag_key} must share one {col}")
        record[col] = distinct[0].as_py()
    return record
