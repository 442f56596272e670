"""Writing one version: allocate an id, write parts, commit (manifest last).

Commit order makes a version visible only when complete: data files, then the
bag index (bag groups), then ``_manifest.json`` (this commits the version),
then the ``_latest.json`` pointer. A writer that dies before the manifest
leaves a partial folder that readers ignore and ``FeatureStore.gc`` removes.

Bag groups can carry bags forward: a new version lists files of an earlier
version (``../v0001/part-00000.parquet``) instead of copying them, when every
bag in that file is carried; a file that also holds bags not carried has just
the carried bags' row groups copied (see :func:`carry_parts`).

One writer per group at a time is the supported use; two concurrent writers
are detected (best effort) through the ``_writer.json`` token and the loser
gets a :class:`~mmray.errors.StoreError` instead of a mixed version.
"""

from __future__ import annotations

import datetime as dt
import os
import posixpath
import socket
import uuid
from collections import Counter

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mmray import environments
from mmray.errors import StoreError
from mmray.store import fsio, layout, manifest as manifest_mod, parts as parts_mod


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def allocate(fs: pafs.FileSystem, root: str, group: str) -> tuple[str, str]:
    """Reserve the next version id of ``group``; returns ``(version, writer token)``."""
    gdir = layout.group_dir(root, group)
    environments.check_store_write(environments.store_location(fs, gdir))  # dev never writes prod
    with fsio.io_failure(f"group {group!r}", doing=f"reserving a new version under {fsio.display(fs, gdir)}",
                         then="nothing was written; check that the store is reachable and writable, then "
                              "run the write again"):
        numbers = [layout.version_number(d) for d in fsio.subdirs(fs, gdir)]
        n = max([x for x in numbers if x is not None], default=0) + 1
        token = uuid.uuid4().hex
        for _ in range(20):
            version = layout.version_id(n)
            vdir = layout.version_dir(root, group, version)
            wpath = posixpath.join(vdir, layout.WRITER)
            if not fsio.exists(fs, wpath) and not fsio.exists(fs, posixpath.join(vdir, layout.MANIFEST)):
                fsio.put_json(fs, wpath, {"token": token, "host": socket.gethostname(),
                                          "pid": os.getpid(), "started_utc": _now()})
                if fsio.get_json(fs, wpath).get("token") == token:
                    return version, token
            n += 1
    raise StoreError(f"group {group!r}: could not reserve a new version under {gdir} "
                     f"(another writer keeps taking them?)")


def commit(fs: pafs.FileSystem, root: str, *, group: str, version: str, token: str, kind: str,
           bag_key: str | None, parts: list[dict], sources: list[dict], params: dict) -> dict:
    """Write the bag index, the manifest, then the latest pointer. Returns the manifest."""
    where = f"group {group!r} version {version}"
    if not parts:
        raise StoreError(f"{where}: nothing was written, so nothing is committed; a version "
                         f"needs at least one row")
    names = [p["path"] for p in parts]
    if len(set(names)) != len(names):
        raise StoreError(f"{where}: part files written twice: "
                         f"{sorted({n for n in names if names.count(n) > 1})}")
    schema = manifest_mod.unify(parts, where=where)
    vdir = layout.version_dir(root, group, version)
    num_bags = None
    if kind == "bag":
        index = bag_index(parts, bag_key=bag_key, where=where)
        num_bags = len(set(index["bag_id"].to_pylist()))
        path = posixpath.join(vdir, layout.BAG_INDEX)
        with (fsio.io_failure(where, doing=f"writing the bag index {fsio.display(fs, path)}"),
              fs.open_output_stream(path) as f):
            pq.write_table(index, f)
    man = manifest_mod.build(group=group, version=version, kind=kind, bag_key=bag_key,
                             parts=parts, sources=sources, params=params, num_bags=num_bags,
                             schema=schema)
    wpath = posixpath.join(vdir, layout.WRITER)
    with fsio.io_failure(where, doing=f"checking the writer token {fsio.display(fs, wpath)}"):
        try:
            holder = fsio.get_json(fs, wpath).get("token")
        except (FileNotFoundError, ValueError):  # removed or garbled: not ours any more
            holder = None
    if holder != token:
        raise StoreError(f"{where}: another writer took over {vdir} (writer token changed); "
                         f"nothing committed; write again")
    mpath = layout.manifest_path(root, group, version)
    with fsio.io_failure(where, doing=f"writing the manifest {fsio.display(fs, mpath)}",
                         then=f"the version is committed only if the manifest landed (FeatureStore.versions"
                              f"({group!r}) lists it then); check that the store is reachable, then run the "
                              f"write again"):
        fsio.put_json(fs, mpath, man)
    with fsio.io_failure(where, doing="moving the latest pointer",
                         then=f"{version} is committed but latest may still name an older version; once the "
                              f"store is reachable, FeatureStore.set_latest({group!r}, {version!r}) fixes it"):
        _advance_latest(fs, root, group, version)
    try:
        fs.delete_file(wpath)
    except OSError:
        pass  # harmless: the manifest already commits the version
    return man


def discard(fs: pafs.FileSystem, root: str, group: str, version: str) -> bool:
    """Remove an uncommitted version's folder, best effort (``gc`` finishes the job when the store is down).

    Returns True, and removes nothing, when the version's manifest landed after all: a commit that
    failed only at the latest pointer is committed, and a committed version is never deleted.
    """
    try:
        if fsio.exists(fs, layout.manifest_path(root, group, version)):
            return True
        fs.delete_dir(layout.version_dir(root, group, version))
    except OSError:
        pass  # the store is unreachable: the partial folder stays invisible (no manifest) until gc
    return False


def _advance_latest(fs: pafs.FileSystem, root: str, group: str, version: str) -> None:
    """Point ``latest`` at ``version`` unless it already names a newer committed version."""
    path = layout.latest_path(root, group)
    try:
        current = fsio.get_json(fs, path).get("version")
    except (FileNotFoundError, OSError, ValueError):
        current = None
    cur_n = layout.version_number(current) if current else None
    if cur_n is not None and cur_n > layout.version_number(version) and fsio.exists(
            fs, layout.manifest_path(root, group, current)):
        return
    write_latest(fs, root, group, version)


def write_latest(fs: pafs.FileSystem, root: str, group: str, version: str) -> None:
    fsio.put_json(fs, layout.latest_path(root, group), {"version": version, "updated_utc": _now()})


def bag_index(parts: list[dict], *, bag_key: str, where: str) -> pa.Table:
    """One row per (bag, file, row group); checks each bag has one patient and time."""
    rows = [b for p in parts for b in p["bags"]]
    df = pd.DataFrame(rows, columns=["bag_id", "patient_id", "event_time", "path",
                                     "row_group", "num_rows"])
    per_bag = df.groupby("bag_id")[["patient_id", "event_time"]].nunique()
    bad = per_bag[(per_bag["patient_id"] > 1) | (per_bag["event_time"] > 1)]
    if len(bad):
        raise StoreError(f"{where}: {bag_key} {list(bad.index[:5])} appear with different "
                         f"patient_id or event_time in different parts; one bag belongs to one "
                         f"patient at one time")
    df = df.sort_values(["bag_id", "path", "row_group"], kind="stable")
    return pa.table({
        "bag_id": pa.array(df["bag_id"].astype(str).tolist(), pa.string()),
        "patient_id": pa.array(df["patient_id"].tolist(), pa.string()),
        "event_time": pa.array(df["event_time"].tolist(), pa.timestamp("us", tz="UTC")),
        "path": pa.array(df["path"].tolist(), pa.string()),
        "row_group": pa.array(df["row_group"].tolist(), pa.int32()),
        "num_rows": pa.array(df["num_rows"].tolist(), pa.int64()),
    })


def carry_parts(fs: pafs.FileSystem, root: str, *, group: str, from_version: str, to_version: str,
                bag_ids, where: str) -> list[dict]:
    """Part records that put bags ``bag_ids`` of committed ``from_version`` into ``to_version``.

    Zero-copy where possible: a file whose bags are all carried is referenced
    by a relative path (``../v0001/part-00000.parquet``); from a file that also
    holds other bags, only the carried bags' row groups are copied into a new
    part of ``to_version``. Returns ``[]`` for no bags.
    """
    wanted = {str(b) for b in bag_ids}
    if not wanted:
        return []
    try:
        man = fsio.get_json(fs, layout.manifest_path(root, group, from_version))
    except (FileNotFoundError, OSError, ValueError) as e:
        raise StoreError(f"{where}: cannot carry bags from {from_version}: it is not a committed "
                         f"version of group {group!r} ({e})") from e
    if man.get("kind") != "bag":
        raise StoreError(f"{where}: cannot carry bags from {from_version}: it is a "
                         f"{man.get('kind')} group version, not a bag group")
    with fs.open_input_file(posixpath.join(layout.version_dir(root, group, from_version),
                                           man["bag_index"])) as f:
        index = pq.read_table(f).to_pandas()
    missing = sorted(wanted - set(index["bag_id"]))
    if missing:
        raise StoreError(f"{where}: {len(missing)} bag(s) to carry are not in {group!r} "
                         f"{from_version}, e.g. {missing[:5]}; carry only bags that version holds")
    sizes = {f["path"]: f for f in man["files"]}
    records: list[dict] = []
    for i, (rel, rows) in enumerate(index.groupby("path", sort=True)):
        keep = rows[rows["bag_id"].isin(wanted)]
        if keep.empty:
            continue
        src = layout.data_path(root, group, from_version, rel)
        if len(keep) == len(rows):  # every bag of this file is carried: reference it
            new_rel = layout.carried_path(rel, from_version=from_version)
            bags = [{"bag_id": r.bag_id, "patient_id": r.patient_id, "event_time": r.event_time,
                     "path": new_rel, "row_group": int(r.row_group), "num_rows": int(r.num_rows)}
                    for r in keep.itertuples(index=False)]
            records.append({"path": new_rel, "num_rows": int(rows["num_rows"].sum()),
                            "size_bytes": int(sizes[rel]["size_bytes"]), "schema": man["arrow_schema"],
                            "bags": bags, "carried_from": layout.owner_version(rel, version=from_version)})
            continue
        with fs.open_input_file(src) as f:  # mixed file: copy just the carried row groups
            table = pq.ParquetFile(f).read_row_groups(sorted(int(g) for g in keep["row_group"]))
        name = f"carried-{from_version}-{i:05d}"
        record = parts_mod.write_part(fs, layout.version_dir(root, group, to_version), table,
                                      part_name=name, bag_key=man["bag_key"],
                                      where=f"{where}, part {name!r}")
        records.append(record)
    return records


class VersionWriter:
    """Streams parts into one new version; use as a context manager.

    ``with store.open_version("tiles", kind="bag", bag_key="slide_id") as v:
    v.write_part(df, part_name="slide-001")`` commits on a clean exit; on an
    exception nothing becomes visible (the partial folder is removed, best effort).
    """

    def __init__(self, fs: pafs.FileSystem, root: str, *, group: str, kind: str,
                 bag_key: str | None, sources: list[dict], params: dict):
        self._fs, self._root = fs, root
        self.group, self.kind, self.bag_key = group, kind, bag_key
        self._sources, self._params = sources, params
        self.version, self._token = allocate(fs, root, group)
        self._parts: list[dict] = []
        self._keys: set[tuple[str, int]] = set()
        self._carried: set[str] = set()
        self._state = "open"
        self.manifest: dict | None = None

    @property
    def where(self) -> str:
        return f"group {self.group!r} version {self.version}"

    def write_part(self, data, *, part_name: str | None = None) -> dict:
        """Write a DataFrame/Table as one Parquet part; returns ``{"path", "num_rows"}``."""
        if self._state != "open":
            raise StoreError(f"{self.where}: the writer is {self._state}; open a new version")
        name = part_name or f"part-{len(self._parts):05d}"
        where = f"{self.where}, part {name!r}"
        if any(p["path"] == f"{name}.parquet" for p in self._parts):
            raise StoreError(f"{where}: a part with this name was already written")
        table = parts_mod.prepare(data, bag_key=self.bag_key, where=where)
        if self.kind == "table":
            self._check_unique(table, where=where)
        elif self._carried:
            clash = sorted(self._carried & set(table[self.bag_key].cast(pa.string()).to_pylist()))
            if clash:
                raise StoreError(f"{where}: bags {clash[:5]} were carried from an earlier version; "
                                 f"write a bag or carry it, not both")
        record = parts_mod.write_part(self._fs, layout.version_dir(self._root, self.group,
                                                                   self.version),
                                      table, part_name=name, bag_key=self.bag_key, where=where)
        self._parts.append(record)
        return {"path": record["path"], "num_rows": record["num_rows"]}

    def carry_bags(self, from_version: str, bag_ids) -> int:
        """Carry bags of an earlier committed version into this one (bag groups only).

        Files are referenced, not copied, when all their bags are carried (see
        :func:`carry_parts`). Returns the number of bags carried.
        """
        if self._state != "open":
            raise StoreError(f"{self.where}: the writer is {self._state}; open a new version")
        if self.kind != "bag":
            raise StoreError(f"{self.where}: only bag groups carry bags forward; this is a "
                             f"{self.kind} group")
        records = carry_parts(self._fs, self._root, group=self.group, from_version=from_version,
                              to_version=self.version, bag_ids=bag_ids, where=self.where)
        have = {b["bag_id"] for p in self._parts for b in p["bags"]}
        dup = sorted(have & {b["bag_id"] for r in records for b in r["bags"]})
        if dup:
            raise StoreError(f"{self.where}: bags {dup[:5]} were already written or carried")
        self._parts.extend(records)
        self._carried |= {b["bag_id"] for r in records for b in r["bags"]}
        return len({b["bag_id"] for r in records for b in r["bags"]})

    def _check_unique(self, table: pa.Table, *, where: str) -> None:
        new = list(zip(table["patient_id"].to_pylist(),
                       table["event_time"].cast(pa.int64()).to_pylist()))
        counts = Counter(new)
        dup = next((k for k, c in counts.items() if c > 1 or k in self._keys), None)
        if dup is not None:
            pid, t = dup
            raise StoreError(
                f"{where}: duplicate key (patient_id={pid!r}, event_time="
                f"{pd.Timestamp(t, unit='us', tz='UTC')}); a table group holds one row per "
                f"patient and time (use a bag group for many rows per key)")
        self._keys.update(counts)

    def commit(self) -> str:
        if self._state != "open":
            raise StoreError(f"{self.where}: the writer is {self._state}")
        self.manifest = commit(self._fs, self._root, group=self.group, version=self.version,
                               token=self._token, kind=self.kind, bag_key=self.bag_key,
                               parts=self._parts, sources=self._sources, params=self._params)
        self._state = "committed"
        return self.version

    def abort(self) -> None:
        """Discard the version: remove its folder (best effort; ``gc`` finishes the job)."""
        if self._state == "committed":
            return
        self._state = "committed" if discard(self._fs, self._root, self.group, self.version) else "aborted"

    def __enter__(self) -> "VersionWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()
