"""A Ray Data Datasink that writes a Dataset as a new version of a feature group.

``ds.write_datasink(FeatureGroupSink(store, "tiles", kind="bag", bag_key="slide_id"))``

* ``on_write_start`` (driver, before any write task): reserves the version id.
* ``write`` (one Ray task per group of blocks): writes each block as a Parquet
  part ``part-<task>-<block>.parquet`` and returns the part records.
* ``on_write_complete`` (driver, after every write task succeeded): writes the
  bag index, the manifest and the latest pointer, exactly once.
* ``on_write_failed``: removes the partial version (best effort); nothing was
  ever visible because no manifest was written.

Table groups written through the sink are not checked for duplicate
(patient_id, event_time) keys across blocks (the join keeps the last row
written for a duplicate key); ``FeatureStore.write_table`` and
``open_version`` do check.
"""

from __future__ import annotations

from typing import Iterable

from ray.data import Datasink
from ray.data.block import Block, BlockAccessor
from ray.data.datasource.datasink import WriteResult

from mmray.errors import StoreError
from mmray.store import layout, parts as parts_mod, writer
from mmray.store.store import FeatureStore, check_write_args


class FeatureGroupSink(Datasink[list]):
    """Write a ``ray.data.Dataset`` as one new version of ``group`` in ``store``.

    After ``write_datasink`` returns, :attr:`version` and :attr:`manifest` hold
    what was committed.
    """

    def __init__(self, store: FeatureStore, group: str, *, sources=None,
                 params: dict | None = None, kind: str = "table", bag_key: str | None = None):
        if not isinstance(store, FeatureStore):
            raise StoreError(f"FeatureGroupSink needs a FeatureStore, got {type(store).__name__}")
        self.params, self.sources = check_write_args(group, kind=kind, bag_key=bag_key,
                                                     params=params, sources=sources)
        self.store, self.group, self.kind, self.bag_key = store, group, kind, bag_key
        self.version: str | None = None
        self.manifest: dict | None = None
        self._token: str | None = None

    def get_name(self) -> str:
        return f"FeatureGroup[{self.group}]"

    def on_write_start(self, schema=None) -> None:
        fs, root = self.store.filesystem
        self.version, self._token = writer.allocate(fs, root, self.group)

    def write(self, blocks: Iterable[Block], ctx) -> list[dict]:
        if self.version is None:
            raise StoreError(f"group {self.group!r}: write task started before "
                             f"on_write_start reserved a version")
        fs, root = self.store.filesystem
        vdir = layout.version_dir(root, self.group, self.version)
        records = []
        for i, block in enumerate(blocks):
            table = BlockAccessor.for_block(block).to_arrow()
            if table.num_rows == 0:
                continue
            name = f"part-{ctx.task_idx:05d}-{i:04d}"
            where = f"group {self.group!r} version {self.version}, part {name!r}"
            table = parts_mod.prepare(table, bag_key=self.bag_key, where=where)
            records.append(parts_mod.write_part(fs, vdir, table, part_name=name,
                                                bag_key=self.bag_key, where=where))
        return records

    def on_write_complete(self, write_result: WriteResult[list]) -> None:
        if self.version is None:
            raise StoreError(f"group {self.group!r}: the dataset was empty; nothing committed")
        records = [r for ret in write_result.write_returns for r in (ret or [])]
        records.sort(key=lambda r: r["path"])
        fs, root = self.store.filesystem
        self.manifest = writer.commit(fs, root, group=self.group, version=self.version,
                                      token=self._token, kind=self.kind, bag_key=self.bag_key,
                                      parts=records, sources=self.sources, params=self.params)

    def on_write_failed(self, error: Exception) -> None:
        if self.version is None or self.manifest is not None:
            return
        fs, root = self.store.filesystem
        writer.discard(fs, root, self.group, self.version)
