"""Read a seeded sample of a bag's rows without holding the bag: what MIL training reads per patient.

A patient's bag in a bag group (``wsi_tiles``: one bag per slide, tens of thousands of tile embeddings on
real slides) is read as :class:`BagSampler` does it:

1. which rows qualify (e.g. ``scale == "tile"``) is read from the filter columns alone (a few bytes a row);
2. ``max_rows`` of them are drawn (seeded per key: a patient gets the same sample in every epoch of one
   seed and another sample with another seed), uniformly over all the patient's bags;
3. only the drawn rows are kept while the bag's row groups are read one at a time (a row group of more
   than ``batch_rows`` rows in record batches of that size), so memory is the sample plus one row group
   (the tile sink writes at most 4096 rows per file), whatever the bag's size; row groups nothing was
   drawn from are never read.

The sample equals drawing from the whole concatenated bag (bags in the order given, each bag's rows in
the order :meth:`FeatureStore.read_bag` returns them) with ``numpy.random.default_rng([seed,
crc32(key)]).choice(n, max_rows, replace=False)``, sorted: the rows any earlier reader of whole bags drew.

List columns (embeddings) come back as ``(n, d)`` float32 arrays, other columns as 1-d arrays.  Generic
over groups and columns: a tile bag's ``embedding`` with its ``x``/``y``, a region bag, an h5 import.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmray.errors import StoreError
from mmray.store import layout
from mmray.store.manifest import schema_of


def sample_positions(n: int, *, max_rows: int | None, seed: int, key: str) -> np.ndarray:
    """Sorted positions of at most ``max_rows`` of ``n`` rows (all of them when ``n <= max_rows``)."""
    if not max_rows or n <= max_rows:
        return np.arange(n)
    rng = np.random.default_rng([seed, zlib.crc32(str(key).encode())])
    return np.sort(rng.choice(n, max_rows, replace=False))


def _to_numpy(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type):
        n = len(col)
        if n == 0:
            return np.zeros((0, 0), np.float32)
        if col.null_count:
            raise StoreError(f"a list column holds {col.null_count} null row(s) among the rows asked for")
        values = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        if values.size % n:
            raise StoreError("a list column's rows have different lengths; expected one vector length")
        return values.reshape(n, values.size // n)
    if (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)) and not col.null_count:
        # one Python str per distinct value (a slide id repeats on every tile row): 8 bytes a row, not ~60
        coded = col.dictionary_encode()
        return coded.dictionary.to_numpy(zero_copy_only=False)[coded.indices.to_numpy(zero_copy_only=False)]
    return col.to_numpy(zero_copy_only=False)


class BagSampler:
    """Sampled reads of one version of a bag group (see the module docstring)."""

    def __init__(self, store, group: str, *, version: str | None = None, batch_rows: int = 4096):
        self.store, self.group = store, group
        self.version = version or store.latest(group)
        if self.version is None:
            raise StoreError(f"the store has no group {group!r}")
        self.fs, self.root = store.filesystem
        self.batch_rows = batch_rows
        index = store.bag_index(group, version=self.version)
        cols = ["path", "row_group", "num_rows"]
        self._chunks = {str(bag): list(frame.sort_values(["path", "row_group"], kind="stable")[cols]
                                       .itertuples(index=False, name=None))
                        for bag, frame in index.groupby("bag_id", sort=False)}
        self.schema = schema_of(store.manifest(group, version=self.version))

    def _open(self, path: str):
        full = layout.data_path(self.root, self.group, self.version, path)
        try:
            return self.fs.open_input_file(full)
        except OSError as e:
            raise StoreError(f"group {self.group!r} version {self.version}: cannot read {full}: {e}") from e

    def chunks(self, bag_id) -> list[tuple[str, int, int]]:
        """``(path, row_group, num_rows)`` of a bag, in reading order (:class:`StoreError` for an unknown bag)."""
        try:
            return self._chunks[str(bag_id)]
        except KeyError:
            raise StoreError(f"group {self.group!r} version {self.version} has no bag {bag_id!r}") from None

    def _batches(self, path: str, row_group: int, columns: Sequence[str]) -> Iterable[pa.RecordBatch | pa.Table]:
        """The row group's ``columns``: whole when it has at most ``batch_rows`` rows, else in record batches."""
        with self._open(path) as f:
            pf = pq.ParquetFile(f)
            if pf.metadata.row_group(row_group).num_rows <= self.batch_rows:
                yield pf.read_row_group(row_group, columns=list(columns), use_threads=False)
            else:
                yield from pf.iter_batches(batch_size=self.batch_rows, row_groups=[row_group], columns=list(columns),
                                           use_threads=False)

    def _qualifying(self, bag, chunk: tuple[str, int, int], where: Mapping[str, object], row_filter,
                    filter_columns: Sequence[str]) -> np.ndarray:
        path, row_group, num_rows = chunk
        if not where and row_filter is None:
            return np.arange(num_rows)
        keep, offset = [], 0
        for batch in self._batches(path, row_group, list(dict.fromkeys([*where, *filter_columns]))):
            ok = np.ones(batch.num_rows, bool)
            for name, value in where.items():
                ok &= pc.equal(batch.column(name), value).to_numpy(zero_copy_only=False).astype(bool)
            if row_filter is not None:
                ok &= np.asarray(row_filter(bag, batch), bool)
            keep.append(offset + np.flatnonzero(ok))
            offset += batch.num_rows
        return np.concatenate(keep) if keep else np.zeros(0, np.int64)

    def sample(self, bag_ids: Iterable, *, columns: Sequence[str], key: str, max_rows: int | None = None,
               seed: int = 0, where: Mapping[str, object] | None = None, row_filter=None,
               filter_columns: Sequence[str] = ()) -> dict[str, np.ndarray] | None:
        """``{column: array}`` of a seeded sample of at most ``max_rows`` rows over ``bag_ids`` whose columns
        equal ``where`` (e.g. ``{"scale": "tile"}``) and, with ``row_filter(bag_id, batch) -> bool array``
        (reading ``filter_columns``), that it keeps (e.g. the tumour-tile filter's tiles); ``None`` when no
        row qualifies."""
        where = dict(where or {})
        unknown = [c for c in [*columns, *where, *filter_columns] if c not in self.schema.names]
        if unknown:
            raise StoreError(f"group {self.group!r} version {self.version} has no column(s) {unknown}; "
                             f"columns: {self.schema.names}")
        bag_chunks = [(bag, c) for bag in bag_ids for c in self.chunks(bag)]
        chunks = [c for _, c in bag_chunks]
        rows = [self._qualifying(bag, c, where, row_filter, filter_columns) for bag, c in bag_chunks]
        sizes = np.array([len(r) for r in rows], np.int64)
        total = int(sizes.sum())
        if total == 0:
            return None
        picked = sample_positions(total, max_rows=max_rows, seed=seed, key=key)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        parts: dict[str, list] = {c: [] for c in columns}
        for i, chunk in enumerate(chunks):
            lo, hi = np.searchsorted(picked, [starts[i], starts[i + 1]])
            if lo == hi:
                continue  # nothing drawn from this row group: it is never read
            local = rows[i][picked[lo:hi] - starts[i]]  # row numbers within the row group, ascending
            offset = 0
            for batch in self._batches(chunk[0], chunk[1], columns):
                a, b = np.searchsorted(local, [offset, offset + batch.num_rows])
                if b > a:
                    taken = batch.take(pa.array(local[a:b] - offset))
                    for c in columns:
                        parts[c].append(_to_numpy(taken.column(c)))
                offset += batch.num_rows
        return {c: np.concatenate(v) for c, v in parts.items()}
