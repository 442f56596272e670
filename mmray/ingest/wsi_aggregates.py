"""Slide and patient aggregates of the ``wsi_tiles`` group: ``wsi_slide`` and ``wsi_patient``.

``wsi_slide`` (bag group, bag key ``slide_id``, one row per slide; with the
tumour-tile filter on, over the tiles and regions it keeps): key columns,
``encoder_id``, ``tiles_version`` (the ``wsi_tiles`` version whose files hold
the slide's tiles), ``embedding_dim``, ``mpp``, ``tile_px``, ``region_px`` and
the columns of :func:`mmray.features.aggregate.aggregate_columns` for scales
``tile`` and ``region``.  Bags whose tiles did not change are carried forward
zero-copy; the rest are pooled by Ray tasks, one per slide, each reading just
its slide's bag.

``wsi_patient`` (table group, one row per patient): ``event_time`` is the
latest slide's, ``n_slides``, ``slide_ids`` and the same columns pooled over
all the patient's tiles, with ``<scale>_argmax_slide``/``argmin_slide`` naming
the slide of each extremum.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from mmray.features.aggregate import Pooled, aggregate_columns, combine, pool, pooled_from_table
from mmray.store import FeatureStore, layout
from mmray.store.manifest import schema_of

log = logging.getLogger(__name__)

TILES, SLIDES, PATIENTS = "wsi_tiles", "wsi_slide", "wsi_patient"
SCALES = ("tile", "region")
ROWS_PER_PART = 256


def pool_slide(store: FeatureStore, *, version: str, slide_id: str,
               tile_filter: dict | None = None) -> tuple[dict[str, Pooled], int, dict]:
    """``({scale: Pooled}, dim, facts)`` of one slide's bag in ``wsi_tiles``; with ``tile_filter``
    (``{version, threshold}`` of ``wsi_tumour``) only its tiles and regions at or above the threshold
    (all of them when none is, or the slide was not scored)."""
    df = store.read_bag(TILES, slide_id, version=version,
                        columns=["patient_id", "event_time", "scale", "x", "y", "tile_px", "mpp", "encoder_id",
                                 "embedding"])
    if tile_filter:
        from mmray.ingest.wsi_tumour import kept_tiles

        kept = kept_tiles(store, slide_id, version=tile_filter["version"], threshold=tile_filter["threshold"])
        if kept is not None:
            keys = zip(df["scale"].astype(str), df["x"].astype(int), df["y"].astype(int))
            df = df[[k in kept for k in keys]]
    emb = np.stack(df["embedding"].to_numpy()).astype(np.float32)
    out = {}
    for scale in SCALES:
        m = (df["scale"] == scale).to_numpy()
        out[scale] = pool(emb[m], df["x"].to_numpy()[m], df["y"].to_numpy()[m])
    tiles = df[df["scale"] == "tile"]
    regions = df[df["scale"] == "region"]
    facts = {"patient_id": df["patient_id"].iloc[0], "event_time": df["event_time"].iloc[0],
             "encoder_id": df["encoder_id"].iloc[0], "mpp": float(df["mpp"].iloc[0]),
             "tile_px": int(tiles["tile_px"].iloc[0]) if len(tiles) else 0,
             "region_px": int(regions["tile_px"].iloc[0]) if len(regions) else 0}
    return out, emb.shape[1], facts


def _origins(store: FeatureStore, version: str) -> dict[str, str]:
    """slide_id -> the ``wsi_tiles`` version whose folder holds its rows (the newest, if several)."""
    index = store.bag_index(TILES, version=version)
    origins: dict[str, str] = {}
    for bag, path in zip(index["bag_id"], index["path"]):
        v = layout.owner_version(path, version=version)
        origins[bag] = max(origins.get(bag, v), v, key=layout.version_number)
    return origins


def read_arrow(store: FeatureStore, group: str, *, version: str | None = None, columns=None) -> pa.Table:
    man = store.manifest(group, version=version)
    fs, _ = store.filesystem
    return pads.dataset(store.files(group, version=man["version"]), schema=schema_of(man), format="parquet",
                        filesystem=fs).to_table(columns=columns)


def update_slide_aggregates(store: FeatureStore, *, tiles_version: str, embed_key: dict,
                            force: bool = False, tile_filter: dict | None = None) -> tuple[str | None, int]:
    """Bring ``wsi_slide`` in line with ``wsi_tiles@tiles_version`` (and the tumour filter ``tile_filter``,
    ``{version, threshold}`` of ``wsi_tumour``); returns ``(new version or None, pooled)``."""
    origins = _origins(store, tiles_version)
    carry: list[str] = []
    prev = store.latest(SLIDES)
    old_params = store.manifest(SLIDES, version=prev)["params"] if prev is not None else {}
    if prev is not None and not force and old_params.get("embed_key") == embed_key \
            and old_params.get("tile_filter") == tile_filter:
        old = read_arrow(store, SLIDES, version=prev, columns=["slide_id", "tiles_version"]).to_pylist()
        carry = [r["slide_id"] for r in old if origins.get(r["slide_id"]) == r["tiles_version"]]
        if len(carry) == len(old) == len(origins):
            return None, 0  # already current
    todo = sorted(set(origins) - set(carry))
    params = {"embed_key": embed_key, "tiles_version": tiles_version, "tile_filter": tile_filter}
    with store.open_version(SLIDES, kind="bag", bag_key="slide_id", params=params) as writer:
        if carry:
            writer.carry_bags(prev, carry)
        batch: list[tuple[str, dict, int, dict]] = []
        for slide_id, result in _pool_all(store, tiles_version, todo, tile_filter):
            batch.append((slide_id, *result))
            if len(batch) >= ROWS_PER_PART:
                writer.write_part(_slide_table(batch, origins))
                batch = []
        if batch:
            writer.write_part(_slide_table(batch, origins))
    return writer.version, len(todo)


def _pool_all(store: FeatureStore, version: str, slides: list[str], tile_filter: dict | None = None):
    """Yield ``(slide_id, pool_slide(...))``: Ray tasks when Ray is running, else in this process."""
    import ray

    if not ray.is_initialized() or len(slides) <= 1:
        for s in slides:
            yield s, pool_slide(store, version=version, slide_id=s, tile_filter=tile_filter)
        return
    task = ray.remote(num_cpus=1)(pool_slide)
    store_ref = ray.put(store)
    pending = {task.remote(store_ref, version=version, slide_id=s, tile_filter=tile_filter): s for s in slides}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            yield pending.pop(ref), ray.get(ref)


def _slide_table(batch: list[tuple[str, dict, int, dict]], origins: dict[str, str]) -> pa.Table:
    dims = {dim for _, _, dim, _ in batch}
    if len(dims) != 1:
        raise ValueError(f"slides have embeddings of different sizes {sorted(dims)}; one encoder per version")
    dim = dims.pop()
    cols = {"slide_id": pa.array([s for s, *_ in batch], pa.string())}
    for key in ("patient_id", "event_time", "encoder_id"):
        cols[key] = pa.array([f[key] for *_, f in batch])
    cols["tiles_version"] = pa.array([origins[s] for s, *_ in batch], pa.string())
    cols["embedding_dim"] = pa.array([dim] * len(batch), pa.int32())
    for key, typ in (("mpp", pa.float64()), ("tile_px", pa.int32()), ("region_px", pa.int32())):
        cols[key] = pa.array([f[key] for *_, f in batch], typ)
    cols.update(aggregate_columns([p for _, p, _, _ in batch], dim=dim, scales=SCALES))
    return pa.table(cols)


def update_patient_aggregates(store: FeatureStore, *, slide_version: str, force: bool = False) -> str | None:
    """Write ``wsi_patient`` from ``wsi_slide@slide_version`` unless it is already current."""
    prev = store.latest(PATIENTS)
    if prev is not None and not force and \
            store.manifest(PATIENTS, version=prev)["params"].get("slide_version") == slide_version:
        return None
    table = read_arrow(store, SLIDES, version=slide_version)
    dim = int(table["embedding_dim"][0].as_py())
    pooled = {s: pooled_from_table(table, scale=s, dim=dim) for s in SCALES}
    slides = table["slide_id"].to_pylist()
    patients = table["patient_id"].to_pylist()
    times = table["event_time"].to_pylist()
    by_patient: dict[str, list[int]] = {}
    for i, pid in enumerate(patients):
        by_patient.setdefault(pid, []).append(i)
    rows, keys = [], {"patient_id": [], "event_time": [], "n_slides": [], "slide_ids": []}
    for pid in sorted(by_patient):
        idx = sorted(by_patient[pid], key=lambda i: slides[i])
        rows.append({s: combine({slides[i]: pooled[s][i] for i in idx}, dim) for s in SCALES})
        keys["patient_id"].append(pid)
        keys["event_time"].append(max(times[i] for i in idx))
        keys["n_slides"].append(len(idx))
        keys["slide_ids"].append([slides[i] for i in idx])
    cols = {"patient_id": pa.array(keys["patient_id"], pa.string()),
            "event_time": pa.array(keys["event_time"], table.schema.field("event_time").type),
            "encoder_id": pa.array([table["encoder_id"][by_patient[p][0]].as_py() for p in keys["patient_id"]]),
            "embedding_dim": pa.array([dim] * len(rows), pa.int32()),
            "n_slides": pa.array(keys["n_slides"], pa.int32()),
            "slide_ids": pa.array(keys["slide_ids"], pa.list_(pa.string()))}
    cols.update(aggregate_columns(rows, dim=dim, scales=SCALES))
    params = {"slide_version": slide_version}
    return store.write_table(PATIENTS, pa.table(cols), params=params)
