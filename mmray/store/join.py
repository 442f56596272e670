"""Point-in-time join: labels + feature groups -> one training table.

For each label row (``patient_id``, ``event_time``, labels...) every table
group contributes its latest row for that patient whose ``event_time`` is at
or before the label's ``event_time`` (never a row from the future). Its
columns come prefixed ``<group>__<column>``, plus ``<group>__event_time`` (the
time of the row used) and ``has_<group>`` (bool). A patient with no such row
keeps nulls there and ``has_<group>`` False: missing modalities are never
zero-filled. When a group holds several rows with the same key, the one
written last wins.

Bag groups (e.g. tile embeddings per slide) are not joined column-wise: they
add ``<group>__bag_ids`` (the ids of the patient's bags at or before the label
time, oldest first; null when none) and ``has_<group>``; read the bags with
``FeatureStore.read_bag``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from mmray.errors import StoreError
from mmray.store import keys

_ROW = "__row__"
SEP = "__"


def _feature_frame(df: pd.DataFrame, group: str) -> pd.DataFrame:
    return keys.labels_frame(df, where=f"group {group!r}")


def _check_new_columns(table: pd.DataFrame, new: list[str], group: str) -> None:
    clash = [c for c in new if c in table.columns]
    if clash:
        raise StoreError(f"joining group {group!r} would overwrite column(s) {clash} of the "
                         f"label table; rename them in the labels")


def _join_table(left: pd.DataFrame, feats: pd.DataFrame, group: str) -> pd.DataFrame:
    """Latest row at or before each left row's event_time, per patient."""
    feats = feats.reset_index(drop=True)
    feats = feats.drop_duplicates(["patient_id", "event_time"], keep="last")
    values = [c for c in feats.columns if c not in ("patient_id", "event_time")]
    right = feats.rename(columns={c: f"{group}{SEP}{c}" for c in values})
    right[f"{group}{SEP}event_time"] = right["event_time"]
    right = right.sort_values("event_time", kind="stable")
    merged = pd.merge_asof(left, right, on="event_time", by="patient_id",
                           direction="backward", allow_exact_matches=True)
    merged = merged.sort_values(_ROW, kind="stable")
    new = [c for c in merged.columns if c.startswith(f"{group}{SEP}")]
    out = merged[new].reset_index(drop=True)
    out[f"has_{group}"] = merged[f"{group}{SEP}event_time"].notna().to_numpy()
    return out


def _join_bags(left: pd.DataFrame, bags: pd.DataFrame, group: str) -> pd.DataFrame:
    """Ids of each patient's bags at or before each left row's event_time."""
    if "bag_id" not in bags.columns:
        raise StoreError(f"bag group {group!r}: expected columns bag_id, patient_id, "
                         f"event_time (FeatureStore.bags), got {list(bags.columns)}")
    pairs = left.merge(bags[["patient_id", "event_time", "bag_id"]], on="patient_id",
                       suffixes=("", "_bag"))
    pairs = pairs[pairs["event_time_bag"] <= pairs["event_time"]]
    pairs = pairs.sort_values([_ROW, "event_time_bag", "bag_id"], kind="stable")
    lists = pairs.groupby(_ROW)["bag_id"].agg(lambda s: [str(x) for x in s])
    ids = pd.Series([None] * len(left), index=np.sort(left[_ROW].to_numpy()), dtype=object)
    ids.loc[lists.index] = lists
    return pd.DataFrame({f"{group}{SEP}bag_ids": ids.to_numpy(),
                         f"has_{group}": ids.notna().to_numpy()})


def point_in_time_join(labels: pd.DataFrame, *, tables: Mapping[str, pd.DataFrame] | None = None,
                       bags: Mapping[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """Join table groups (and bag-group presence) onto ``labels`` as of each label's time.

    ``labels``: (n, ...) with ``patient_id`` and ``event_time``; ``tables``:
    group -> rows (``patient_id``, ``event_time``, features...); ``bags``:
    group -> one row per bag (``bag_id``, ``patient_id``, ``event_time``).
    Returns n rows in label order, with the label index, keys normalised
    (string ids, UTC microsecond times).
    """
    out = keys.labels_frame(labels)
    left = pd.DataFrame({_ROW: np.arange(len(out)), "patient_id": out["patient_id"].to_numpy(),
                         "event_time": out["event_time"].array})
    left = left.sort_values("event_time", kind="stable").reset_index(drop=True)
    pieces = [(g, _join_table(left, _feature_frame(df, g), g)) for g, df in (tables or {}).items()]
    pieces += [(g, _join_bags(left, _feature_frame(df, g), g)) for g, df in (bags or {}).items()]
    for group, piece in pieces:
        _check_new_columns(out, list(piece.columns), group)
        piece.index = out.index
        out = pd.concat([out, piece], axis=1)
    return out


def training_table(store, labels: pd.DataFrame, *,
                   groups: Sequence[str] | Mapping[str, str | None]) -> pd.DataFrame:
    """Point-in-time join of ``labels`` with groups read from ``store``.

    ``groups``: names (latest versions) or ``{name: version or None}``. The
    versions used are in ``result.attrs["feature_versions"]``.
    """
    if isinstance(groups, str):
        raise StoreError(f"groups must be a list of group names, got the string {groups!r}")
    pinned = dict(groups) if isinstance(groups, Mapping) else {g: None for g in groups}
    tables, bags, used = {}, {}, {}
    for group, version in pinned.items():
        man = store.manifest(group, version=version)
        used[group] = man["version"]
        if man["kind"] == "bag":
            bags[group] = store.bags(group, version=man["version"])
        else:
            tables[group] = store.read_table(group, version=man["version"])
    out = point_in_time_join(labels, tables=tables, bags=bags)
    out.attrs["feature_versions"] = used
    return out


def training_dataset(store, labels: pd.DataFrame, *,
                     groups: Sequence[str] | Mapping[str, str | None]):
    """:func:`training_table` as a ``ray.data.Dataset`` (built from the pandas table)."""
    import ray.data

    table = training_table(store, labels, groups=groups)
    return ray.data.from_arrow(pa.Table.from_pandas(table, preserve_index=False))
