"""Where things live inside a feature store, and what names are allowed.

Layout under the store root (a local folder or ``s3://bucket/prefix``)::

    <group>/_latest.json                  {"version": "v0002"}: written after the manifest
    <group>/v0002/_manifest.json          lineage + file list; its presence commits v0002
    <group>/v0002/_writer.json            writer token while the version is being written
    <group>/v0002/part-00000.parquet      data (table: any rows; bag: sorted by bag key,
                                          one row group per bag)
    <group>/v0002/_bag_index.parquet      bag groups only: bag_id -> (file, row group)
    <group>/v0003/_manifest.json          may list ``../v0002/part-00000.parquet``: a bag
                                          group version can reference (carry forward) the
                                          files of an earlier version instead of copying them
    _failures/<stage>/<utc>-<id>.parquet  failures table, one file per recorded batch

A version folder without ``_manifest.json`` is partial (a writer is busy or
crashed): every reader ignores it and :meth:`FeatureStore.gc` removes it.
"""

from __future__ import annotations

import posixpath
import re

from mmray.errors import StoreError

MANIFEST = "_manifest.json"
LATEST = "_latest.json"
WRITER = "_writer.json"
BAG_INDEX = "_bag_index.parquet"
FAILURES_DIR = "_failures"

KEY_COLUMNS = ("patient_id", "event_time")
KINDS = ("table", "bag")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_VERSION = re.compile(r"^v(\d{4,})$")
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# A data file path inside a manifest: the version's own file, or one of an
# earlier version of the same group (carried forward, never copied).
_DATA_PATH = re.compile(r"^(?:\.\./(v\d{4,})/)?([A-Za-z0-9][A-Za-z0-9_.-]{0,127}\.parquet)$")


def check_name(name: object, *, what: str = "group") -> str:
    """Validate a group (or stage) name: letters, digits, ``_`` and ``-``; no ``__``."""
    if not isinstance(name, str) or not _NAME.match(name) or "__" in name:
        raise StoreError(
            f"invalid {what} name {name!r}: use letters, digits, '_' and '-', starting with a "
            f"letter or digit, at most 128 characters, and no '__' (it separates group and "
            f"column in joined tables), e.g. 'expression' or 'tile_embeddings'")
    return name


def check_part_name(name: object) -> str:
    if not isinstance(name, str) or not _PART.match(name):
        raise StoreError(
            f"invalid part name {name!r}: use letters, digits, '_', '-' and '.', starting with a "
            f"letter or digit (e.g. 'slide-0001'); '.parquet' is added for you")
    return name


def version_id(number: int) -> str:
    """``3 -> "v0003"``; ids sort by :func:`version_number` (and by text up to v9999)."""
    return f"v{number:04d}"


def version_number(version: str) -> int | None:
    """``"v0003" -> 3``; ``None`` for anything that is not a version id."""
    m = _VERSION.match(version) if isinstance(version, str) else None
    return int(m.group(1)) if m else None


def sort_versions(versions) -> list[str]:
    return sorted(versions, key=version_number)


def group_dir(root: str, group: str) -> str:
    return posixpath.join(root, group)


def version_dir(root: str, group: str, version: str) -> str:
    return posixpath.join(root, group, version)


def manifest_path(root: str, group: str, version: str) -> str:
    return posixpath.join(root, group, version, MANIFEST)


def latest_path(root: str, group: str) -> str:
    return posixpath.join(root, group, LATEST)


def data_path(root: str, group: str, version: str, rel: str) -> str:
    """Full path of a data file listed in ``version``'s manifest as ``rel``.

    ``rel`` is ``part-00000.parquet`` (in the version's folder) or
    ``../v0001/part-00000.parquet`` (a file of an earlier version carried forward).
    Anything else (absolute paths, other folders, other groups) is refused.
    """
    m = _DATA_PATH.match(rel) if isinstance(rel, str) else None
    if not m:
        raise StoreError(f"group {group!r} version {version}: data file path {rel!r} is neither "
                         f"'NAME.parquet' nor '../vNNNN/NAME.parquet'; the manifest is damaged")
    owner = m.group(1) or version
    return posixpath.join(root, group, owner, m.group(2))


def carried_path(rel: str, *, from_version: str) -> str:
    """``rel`` (listed in ``from_version``'s manifest) as seen from another version's folder."""
    m = _DATA_PATH.match(rel) if isinstance(rel, str) else None
    if not m:
        raise StoreError(f"version {from_version}: cannot carry data file {rel!r}: not a data file path")
    return f"../{m.group(1) or from_version}/{m.group(2)}"


def owner_version(rel: str, *, version: str) -> str:
    """The version whose folder holds the data file listed as ``rel`` in ``version``'s manifest."""
    m = _DATA_PATH.match(rel) if isinstance(rel, str) else None
    return (m.group(1) if m and m.group(1) else version)
