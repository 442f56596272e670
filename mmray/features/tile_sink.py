"""A Ray Data Datasink for tile embeddings: one new version of the ``wsi_tiles`` bag group.

Like :class:`mmray.store.FeatureGroupSink`, with three additions:

* rows whose ``error`` column is set are not written; they come back as
  per-slide failures (:attr:`TileEmbeddingSink.failures`), and every row of a
  slide that failed anywhere is removed from the version before it commits
  (so a slide is either complete in the store or absent);
* bags of an earlier version can be carried forward zero-copy
  (:func:`mmray.store.writer.carry_parts`), so a resumed run commits the slides
  it skipped plus the ones it embedded;
* write tasks receive at least ``rows_per_file`` rows, so files are not tiny.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data import Datasink
from ray.data.block import Block, BlockAccessor

from mmray.errors import StoreError
from mmray.store import FeatureStore, layout, parts as parts_mod, writer
from mmray.store.store import check_write_args


class TileEmbeddingSink(Datasink):
    """Write tile-embedding rows as a new version of ``group`` (bag key ``slide_id``).

    After ``write_datasink`` returns: :attr:`version` (None when nothing was
    committed), :attr:`rows_per_slide` (rows written per slide in this run) and
    :attr:`failures` (``{slide_id: (patient_id, reason)}``).
    """

    def __init__(self, store: FeatureStore, group: str = "wsi_tiles", *, params: dict | None = None, sources=None,
                 carry_from: str | None = None, carry_bags=(), rows_per_file: int = 4096, progress=None):
        self.params, self.sources = check_write_args(group, kind="bag", bag_key="slide_id", params=params,
                                                     sources=sources)
        self.store, self.group = store, group
        self.carry_from, self.carry_bags = carry_from, sorted(set(carry_bags))
        self.rows_per_file = rows_per_file
        self.progress = progress
        self.version: str | None = None
        self.manifest: dict | None = None
        self.rows_per_slide: dict[str, int] = {}
        self.failures: dict[str, tuple[str, str]] = {}
        self._token: str | None = None

    def get_name(self) -> str:
        return f"TileEmbeddings[{self.group}]"

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def on_write_start(self, schema=None) -> None:
        fs, root = self.store.filesystem
        self.version, self._token = writer.allocate(fs, root, self.group)

    def write(self, blocks: Iterable[Block], ctx) -> dict:
        fs, root = self.store.filesystem
        vdir = layout.version_dir(root, self.group, self.version)
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        out = {"parts": [], "failures": {}, "rows": {}}
        if not tables:
            return out
        table = pa.concat_tables(tables, promote_options="permissive")
        bad = pc.not_equal(table["error"], "")
        for row in table.filter(bad).select(["slide_id", "patient_id", "error"]).to_pylist():
            out["failures"].setdefault(row["slide_id"], (row["patient_id"], row["error"]))
        good = table.filter(pc.invert(bad)).drop_columns(["error"])
        if good.num_rows:
            name = f"part-{ctx.task_idx:05d}"
            where = f"group {self.group!r} version {self.version}, part {name!r}"
            good = parts_mod.prepare(good, bag_key="slide_id", where=where)
            out["parts"].append(parts_mod.write_part(fs, vdir, good, part_name=name, bag_key="slide_id",
                                                     where=where))
            out["rows"] = dict(Counter(good["slide_id"].to_pylist()))
        if self.progress is not None:
            self.progress.written.remote(out["rows"], {k: v[1] for k, v in out["failures"].items()})
        return out

    def on_write_complete(self, write_result) -> None:
        returns = [r for r in write_result.write_returns if r]
        for r in returns:
            for slide, failure in r["failures"].items():
                self.failures.setdefault(slide, tuple(failure))
            for slide, n in r["rows"].items():
                self.rows_per_slide[slide] = self.rows_per_slide.get(slide, 0) + n
        failed = set(self.failures)
        for slide in failed:
            self.rows_per_slide.pop(slide, None)
        self.commit([p for r in returns for p in r["parts"]], failed=failed)

    def commit(self, records: list[dict], *, failed: set[str] = frozenset()) -> None:
        """Drop failed slides from the written parts, carry bags forward, commit (or clean up)."""
        fs, root = self.store.filesystem
        if self.version is None:
            if not self.carry_bags:
                return
            self.version, self._token = writer.allocate(fs, root, self.group)
        vdir = layout.version_dir(root, self.group, self.version)
        where = f"group {self.group!r} version {self.version}"
        records = [r for r in (_without_bags(fs, vdir, rec, failed, where=where) for rec in records) if r]
        records.sort(key=lambda r: r["path"])
        if self.carry_from and self.carry_bags:
            if not records and set(self.carry_bags) == set(self.store.bag_ids(self.group, version=self.carry_from)):
                self._discard()  # nothing new: the earlier version already holds exactly these slides
                return
            records += writer.carry_parts(fs, root, group=self.group, from_version=self.carry_from,
                                          to_version=self.version, bag_ids=self.carry_bags, where=where)
        if not records:
            self._discard()
            return
        sources = [s for s in self.sources if s.get("slide_id") not in failed]  # lineage of what is committed
        self.manifest = writer.commit(fs, root, group=self.group, version=self.version, token=self._token,
                                      kind="bag", bag_key="slide_id", parts=records, sources=sources,
                                      params=self.params)

    def _discard(self) -> None:
        fs, root = self.store.filesystem
        if not writer.discard(fs, root, self.group, self.version):
            self.version = None

    def on_write_failed(self, error: Exception) -> None:
        if self.version is not None and self.manifest is None:
            self._discard()


def _without_bags(fs, vdir: str, record: dict, bags: set[str], *, where: str) -> dict | None:
    """``record``'s part rewritten without ``bags`` (``None`` when nothing is left)."""
    if not bags or not {b["bag_id"] for b in record["bags"]} & bags:
        return record
    path = f"{vdir}/{record['path']}"
    try:
        with fs.open_input_file(path) as f:
            table = pq.read_table(f)
    except OSError as e:
        raise StoreError(f"{where}: cannot re-read part {record['path']} to drop failed slides: {e}") from e
    table = table.filter(pc.invert(pc.is_in(table["slide_id"], pa.array(sorted(bags)))))
    if table.num_rows == 0:
        fs.delete_file(path)
        return None
    name = record["path"][: -len(".parquet")]
    return parts_mod.write_part(fs, vdir, table, part_name=name, bag_key="slide_id", where=f"{where}, part {name!r}")
