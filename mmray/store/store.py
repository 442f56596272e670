"""FeatureStore: versioned feature groups on a local folder or ``s3://bucket/prefix``.

A feature group is a named series of immutable versions (``v0001``, ``v0002``,
...), each a set of Parquet files plus a manifest with lineage, and a
``latest`` pointer. Rows are keyed by ``patient_id`` (string) and
``event_time`` (``timestamp[us, UTC]``; see :mod:`mmray.store.keys`).

* ``kind="table"``: one row per (patient_id, event_time), joined column-wise
  into training tables (:mod:`mmray.store.join`).
* ``kind="bag"``: many rows per bag (e.g. tile embeddings per ``slide_id``),
  stored one row group per bag with an index, so one bag reads alone.

See :mod:`mmray.store.layout` for the files, :mod:`mmray.store.manifest` for
the manifest fields and :mod:`mmray.store.writer` for the commit protocol.
"""

from __future__ import annotations

import os
import posixpath
import time

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mmray import uri as uri_mod
from mmray.errors import StoreError
from mmray.store import failures as failures_mod, fsio, layout
from mmray.store.manifest import check_params, describe_sources, schema_of
from mmray.store.writer import VersionWriter, write_latest


class FeatureStore:
    """Feature groups under ``uri`` (local folder or ``s3://bucket/prefix``).

    S3 credentials, region and endpoint come from the usual AWS variables
    (``AWS_ENDPOINT_URL`` for S3-compatible servers). Creating a store reads
    nothing; a local folder is created on the first write.
    """

    def __init__(self, uri: str | os.PathLike):
        if not isinstance(uri, (str, os.PathLike)) or not str(uri).strip():
            raise StoreError(f"feature store location must be a folder path or s3:// URI, "
                             f"got {uri!r}")
        uri = str(uri)
        if uri_mod.is_s3(uri) and not uri[len("s3://"):].split("/")[0]:
            raise StoreError(f"feature store URI {uri!r} names no bucket; use "
                             f"s3://bucket/prefix")
        self._fs, self._root = uri_mod.filesystem(uri)
        self._root = self._root.rstrip("/")
        self.uri = uri.rstrip("/") if uri_mod.is_s3(uri) else self._root
        self._manifests: dict[tuple[str, str], dict] = {}
        self._indexes: dict[tuple[str, str], pd.DataFrame] = {}

    def __repr__(self) -> str:
        return f"FeatureStore({self.uri!r})"

    def __getstate__(self) -> dict:  # Ray ships stores to workers: drop the caches
        return {"uri": self.uri, "fs": self._fs, "root": self._root}

    def __setstate__(self, state: dict) -> None:
        self.uri, self._fs, self._root = state["uri"], state["fs"], state["root"]
        self._manifests, self._indexes = {}, {}

    @property
    def filesystem(self) -> tuple[pafs.FileSystem, str]:
        """``(pyarrow filesystem, root path inside it)``."""
        return self._fs, self._root

    # ---------------------------------------------------------------- discovery
    def groups(self) -> list[str]:
        """Names of the groups with at least one committed version, sorted."""
        names = [d for d in fsio.subdirs(self._fs, self._root) if _is_name(d)]
        return [g for g in names if self.versions(g)]

    def versions(self, group: str) -> list[str]:
        """Committed versions of ``group``, oldest first (``[]`` for an unknown group)."""
        layout.check_name(group)
        cands = [d for d in fsio.subdirs(self._fs, layout.group_dir(self._root, group))
                 if layout.version_number(d) is not None]
        infos = self._fs.get_file_info(
            [layout.manifest_path(self._root, group, v) for v in cands])
        done = [v for v, i in zip(cands, infos) if i.type == pafs.FileType.File]
        return layout.sort_versions(done)

    def latest(self, group: str) -> str | None:
        """The version the ``latest`` pointer names (``None``: no committed version)."""
        layout.check_name(group)
        try:
            pointed = fsio.get_json(self._fs, layout.latest_path(self._root, group))["version"]
        except (FileNotFoundError, OSError, ValueError, KeyError, TypeError):
            pointed = None
        if pointed and layout.version_number(pointed) is not None and fsio.exists(
                self._fs, layout.manifest_path(self._root, group, pointed)):
            return pointed
        done = self.versions(group)  # pointer missing: a writer died right after its manifest
        return done[-1] if done else None

    def set_latest(self, group: str, version: str) -> None:
        """Point ``latest`` at an existing committed version (e.g. to roll back)."""
        self._resolve(group, version)
        write_latest(self._fs, self._root, group, version)

    def manifest(self, group: str, *, version: str | None = None) -> dict:
        """The manifest of a version (default: latest) as a dict; see :mod:`.manifest`."""
        version = self._resolve(group, version)
        key = (group, version)
        if key not in self._manifests:  # versions are immutable: cache forever
            path = layout.manifest_path(self._root, group, version)
            try:
                self._manifests[key] = fsio.get_json(self._fs, path)
            except (OSError, ValueError) as e:
                raise StoreError(f"group {group!r} version {version}: cannot read manifest "
                                 f"{path}: {e}") from e
        return self._manifests[key]

    def files(self, group: str, *, version: str | None = None) -> list[str]:
        """Paths (inside :attr:`filesystem`) of the data files of a version."""
        man = self.manifest(group, version=version)
        return [layout.data_path(self._root, group, man["version"], f["path"]) for f in man["files"]]

    def _resolve(self, group: str, version: str | None) -> str:
        layout.check_name(group)
        if version is None:
            latest = self.latest(group)
            if latest is None:
                raise StoreError(self._unknown_group(group))
            return latest
        if not self._manifests.get((group, version)):
            done = self.versions(group)
            if not done:
                raise StoreError(self._unknown_group(group))
            if version not in done:
                raise StoreError(f"group {group!r} has no committed version {version!r} in "
                                 f"{self.uri}; versions: {done} (partial, uncommitted "
                                 f"versions are never readable)")
        return version

    def _unknown_group(self, group: str) -> str:
        return (f"no feature group {group!r} with a committed version in {self.uri}; "
                f"groups: {self.groups() or 'none yet'}")

    # ---------------------------------------------------------------- writing
    def open_version(self, group: str, *, sources=None, params: dict | None = None,
                     kind: str = "table", bag_key: str | None = None) -> VersionWriter:
        """Start a new version of ``group`` written part by part (context manager).

        ``sources``: files/folders/URIs the features came from (checksummed now);
        ``params``: JSON-able dict; ``kind``: ``"table"`` or ``"bag"`` (needs ``bag_key``).
        """
        params, sources = check_write_args(group, kind=kind, bag_key=bag_key, params=params,
                                           sources=sources)
        return VersionWriter(self._fs, self._root, group=group, kind=kind, bag_key=bag_key,
                             sources=sources, params=params)

    def write_table(self, group: str, data, *, sources=None, params: dict | None = None,
                    kind: str = "table", bag_key: str | None = None) -> str:
        """Write a DataFrame/Arrow table as a new version; returns its version id."""
        with self.open_version(group, sources=sources, params=params, kind=kind,
                               bag_key=bag_key) as writer:
            writer.write_part(data)
        return writer.version

    # ---------------------------------------------------------------- reading
    def read_table(self, group: str, *, version: str | None = None,
                   columns: list[str] | None = None) -> pd.DataFrame:
        """All rows of a version (default: latest) as a DataFrame."""
        man = self.manifest(group, version=version)
        schema = schema_of(man)
        self._check_columns(man, schema, columns)
        try:
            dataset = pads.dataset(self.files(group, version=man["version"]), schema=schema,
                                   format="parquet", filesystem=self._fs)
            return dataset.to_table(columns=columns).to_pandas()
        except OSError as e:
            raise StoreError(f"group {group!r} version {man['version']}: cannot read its data "
                             f"files under {self.uri}: {e}") from e

    def bags(self, group: str, *, version: str | None = None) -> pd.DataFrame:
        """One row per bag: ``bag_id, patient_id, event_time, num_rows`` (sorted by bag_id)."""
        index = self._bag_index(group, version)
        return (index.groupby("bag_id", sort=True)
                .agg(patient_id=("patient_id", "first"), event_time=("event_time", "first"),
                     num_rows=("num_rows", "sum"))
                .reset_index())

    def bag_ids(self, group: str, *, version: str | None = None) -> list[str]:
        return self.bags(group, version=version)["bag_id"].tolist()

    def read_bag(self, group: str, bag_id, *, version: str | None = None,
                 columns: list[str] | None = None) -> pd.DataFrame:
        """The rows of one bag, reading only its row group(s)."""
        man = self.manifest(group, version=version)
        index = self._bag_index(group, man["version"])
        hits = index[index["bag_id"] == str(bag_id)]
        if hits.empty:
            some = sorted(index["bag_id"].unique())
            raise StoreError(f"group {group!r} version {man['version']} has no bag "
                             f"{man['bag_key']}={bag_id!r}; it has {len(some)} bags, e.g. "
                             f"{some[:5]}")
        schema = schema_of(man)
        self._check_columns(man, schema, columns)
        if columns:
            schema = pa.schema([schema.field(c) for c in columns])
        tables = []
        for path, rows in hits.groupby("path", sort=True):
            full = layout.data_path(self._root, group, man["version"], path)
            try:
                with self._fs.open_input_file(full) as f:
                    t = pq.ParquetFile(f).read_row_groups(sorted(rows["row_group"]),
                                                          columns=columns)
            except OSError as e:
                raise StoreError(f"group {group!r} version {man['version']}: cannot read "
                                 f"{full}: {e}") from e
            tables.append(t if t.schema.equals(schema) else t.cast(schema))
        return pa.concat_tables(tables).to_pandas()

    def bag_index(self, group: str, *, version: str | None = None) -> pd.DataFrame:
        """Where each bag lives: ``bag_id, patient_id, event_time, path, row_group, num_rows``.

        ``path`` is relative to the version folder (``../vNNNN/...`` for a carried file).
        """
        return self._bag_index(group, version).copy()

    def _bag_index(self, group: str, version: str | None) -> pd.DataFrame:
        man = self.manifest(group, version=version)
        if man["kind"] != "bag":
            raise StoreError(f"group {group!r} version {man['version']} is a {man['kind']} "
                             f"group; bags exist only in groups written with kind='bag'")
        key = (group, man["version"])
        if key not in self._indexes:
            path = layout.version_dir(self._root, group, man["version"]) + "/" + man["bag_index"]
            try:
                with self._fs.open_input_file(path) as f:
                    self._indexes[key] = pq.read_table(f).to_pandas()
            except OSError as e:
                raise StoreError(f"group {group!r} version {man['version']}: cannot read the "
                                 f"bag index {path}: {e}") from e
        return self._indexes[key]

    @staticmethod
    def _check_columns(man: dict, schema: pa.Schema, columns) -> None:
        if columns is None:
            return
        unknown = [c for c in columns if c not in schema.names]
        if unknown:
            raise StoreError(f"group {man['group']!r} version {man['version']} has no "
                             f"column(s) {unknown}; columns: {schema.names}")

    def to_ray_dataset(self, group: str, *, version: str | None = None,
                       columns: list[str] | None = None):
        """A ``ray.data.Dataset`` reading the version's Parquet files (lazily)."""
        import ray.data

        man = self.manifest(group, version=version)
        self._check_columns(man, schema_of(man), columns)
        return ray.data.read_parquet(self.files(group, version=man["version"]),
                                     filesystem=self._fs, columns=columns, partitioning=None)

    # ---------------------------------------------------------------- failures
    def record_failures(self, stage: str, failures: list[dict]) -> int:
        """Append failures (dicts with ``item, patient_id, reason``) of a pipeline stage."""
        return failures_mod.record(self._fs, self._root, stage, failures)

    def failures(self, stage: str | None = None) -> pd.DataFrame:
        """Recorded failures, of one stage or all: ``stage, item, patient_id, reason, ...``."""
        return failures_mod.read(self._fs, self._root, stage)

    # ---------------------------------------------------------------- maintenance
    def gc(self, *, older_than_s: float = 24 * 3600, dry_run: bool = False) -> list[str]:
        """Remove partial (uncommitted) versions untouched for ``older_than_s`` seconds.

        Returns ``["group/version", ...]`` removed (or that would be, with ``dry_run``).
        A writer still busy touches its folder at every part, so keep the age
        above the longest gap between two parts of a running job. A data file
        that any committed version lists (bags carried forward as
        ``../vNNNN/...``) is never deleted, even in a folder that lost its manifest.
        On S3, multipart uploads left unfinished in a removed folder are aborted.
        """
        now = time.time()
        removed = []
        for group in (d for d in fsio.subdirs(self._fs, self._root) if _is_name(d)):
            gdir = layout.group_dir(self._root, group)
            referenced: set[str] | None = None  # read lazily: most groups have nothing to remove
            for v in fsio.subdirs(self._fs, gdir):
                if layout.version_number(v) is None or fsio.exists(
                        self._fs, layout.manifest_path(self._root, group, v)):
                    continue
                vdir = posixpath.join(gdir, v)
                mtime = fsio.newest_mtime_s(self._fs, vdir)
                if mtime is not None and now - mtime < older_than_s:
                    continue
                if referenced is None:
                    referenced = self.referenced_files(group)
                removed.append(f"{group}/{v}")
                if dry_run:
                    continue
                kept = [i.path for i in fsio.files_under(self._fs, vdir)
                        if posixpath.normpath(i.path) in referenced]
                fsio.abort_uploads(self._fs, vdir)  # a file in flight when its writer died
                if not kept:
                    self._fs.delete_dir(vdir)
                    continue
                for info in fsio.files_under(self._fs, vdir):
                    if posixpath.normpath(info.path) not in referenced:
                        self._fs.delete_file(info.path)
        return removed

    def referenced_files(self, group: str) -> set[str]:
        """Normalised paths of every data file that a committed version of ``group`` lists."""
        refs: set[str] = set()
        for v in self.versions(group):
            man = self.manifest(group, version=v)
            refs.update(posixpath.normpath(layout.data_path(self._root, group, v, f["path"]))
                        for f in man["files"])
            if man.get("bag_index"):
                refs.add(posixpath.normpath(posixpath.join(layout.version_dir(self._root, group, v),
                                                           man["bag_index"])))
        return refs


def check_write_args(group: str, *, kind: str, bag_key: str | None, params,
                     sources) -> tuple[dict, list[dict]]:
    """Validate what a new version is written with; returns ``(params, sources lineage)``."""
    layout.check_name(group)
    where = f"group {group!r}"
    if kind not in layout.KINDS:
        raise StoreError(f"{where}: kind must be one of {list(layout.KINDS)}, got {kind!r}")
    if (kind == "bag") != bool(bag_key):
        raise StoreError(f"{where}: kind='bag' needs bag_key (e.g. bag_key='slide_id') and "
                         f"kind='table' takes none; got kind={kind!r}, bag_key={bag_key!r}")
    if bag_key in layout.KEY_COLUMNS:
        raise StoreError(f"{where}: bag_key must be a column other than "
                         f"{list(layout.KEY_COLUMNS)}, got {bag_key!r}")
    return check_params(params, where=where), describe_sources(sources, where=where)


def _is_name(name: str) -> bool:
    try:
        layout.check_name(name)
        return True
    except StoreError:
        return False
