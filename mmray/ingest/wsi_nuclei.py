"""Ingest nuclei of whole-slide images: ``wsi_nuclei`` (per tile), ``wsi_nuclei_slide``, ``wsi_nuclei_patient``.

Runs after the embedding pass of :func:`mmray.ingest.wsi.ingest_wsi` when
``wsi.nuclei.enabled`` is set (tiles stain-normalised like the embedded ones
when ``wsi.stain`` is on), on the slides the committed ``wsi_tiles``
version holds (a slide that could not be embedded is already a failure).
Resume works like ``wsi_tiles``: a slide whose file, patient key, tiling and
nuclei settings are unchanged is carried forward zero-copy; the rest go
through the Ray Data nuclei stage (:mod:`mmray.features.nuclei_stage`).  A
slide that fails is a failure of the run (reason prefixed ``nuclei:``), the
rest go on.

The aggregates (:mod:`mmray.features.nuclei_aggregate`) are rebuilt whenever
``wsi_nuclei`` or the tumour-tile filter changes.  With a ``wsi_tumour``
group (per-tile ``tumour_probability``, keyed like ``wsi_tiles``: slide_id,
scale, x, y; :mod:`mmray.ingest.wsi_tumour`) and a ``wsi.tile_filter``
threshold, only tiles at or above the threshold are aggregated (a slide none
of whose tiles passes keeps all of them).
"""

from __future__ import annotations

import dataclasses
import logging
import time

import pandas as pd

log = logging.getLogger(__name__)

NUCLEI, NUCLEI_SLIDES, NUCLEI_PATIENTS = "wsi_nuclei", "wsi_nuclei_slide", "wsi_nuclei_patient"
TUMOUR, TUMOUR_COLUMN = "wsi_tumour", "tumour_probability"
LIST_COLUMNS = ("nucleus_x", "nucleus_y", "nucleus_area_um2")


def tile_filter_threshold(cfg) -> float | None:
    """The tumour-probability threshold of ``wsi.tile_filter`` (a number, or a section with ``threshold``
    and optionally ``enabled``); None when there is no filter."""
    tf = getattr(cfg, "tile_filter", None)
    if tf is None or isinstance(tf, bool):
        return None
    if isinstance(tf, (int, float)):
        return float(tf)
    if getattr(tf, "enabled", True) is False:
        return None
    thr = getattr(tf, "threshold", None)
    return None if thr is None else float(thr)


def ingest_nuclei(ctx, *, slides: list[dict], sources: dict[str, dict], report, source, stain=None) -> str | None:
    """Segment nuclei of ``slides`` (dicts from :func:`mmray.ingest.slide_ids.slide_list`; ``sources``: their
    lineage by slide_id) into ``wsi_nuclei``; returns its version (None when nuclei are off).  ``source``:
    where slides are read; ``stain``: the run's :class:`mmray.ingest.wsi_stain.StainPlan` (tiles are
    normalised like the embedded ones).  The caller updates the aggregates
    (:func:`update_nuclei_aggregates`) once the tumour filter is known."""
    from mmray.ingest.wsi import TILES

    cfg = ctx.config
    if not cfg.nuclei.enabled:
        return None
    tiles_version = ctx.store.latest(TILES)
    embedded = set(ctx.store.bag_ids(TILES, version=tiles_version)) if tiles_version else set()
    slides = [s for s in slides if s["slide_id"] in embedded and s["slide_id"] in sources]
    before = ctx.store.latest(NUCLEI)
    version = _segment(ctx, slides=slides, sources=sources, report=report, source=source, stain=stain)
    if version is not None and version != before:
        report.groups[NUCLEI] = version
    return version


def nuclei_key(cfg, stain: dict | None = None) -> dict:
    key = {"nuclei": cfg.nuclei.key(), "tiling": dataclasses.asdict(cfg.tiling())}
    if stain:
        key["stain"] = stain
    return key


def _segment(ctx, *, slides, sources, report, source, stain=None) -> str | None:
    """Run the nuclei stage on the slides not already current; returns the ``wsi_nuclei`` version."""
    from mmray.cli import init_ray
    from mmray.features.nuclei_stage import nuclei_dataset
    from mmray.features.tile_pipeline import pipeline_context
    from mmray.features.tile_progress import ProgressLog
    from mmray.features.tile_sink import TileEmbeddingSink
    from mmray.ingest.wsi import _lineage, _named, _resume

    cfg, store = ctx.config, ctx.store
    stain_params = stain.params() if stain is not None and stain.enabled else None
    key = nuclei_key(cfg, stain_params)
    todo, carry, prev = _resume(store, slides, key, sources, ctx.force, group=NUCLEI, key_param="nuclei_key")
    prev_bags = set(store.bag_ids(NUCLEI, version=prev)) if prev else set()
    if not todo and set(carry) == prev_bags:
        return prev
    init_ray(None)
    log.info("wsi nuclei: %d slide(s) to segment at %.2f um/px (at most %s tiles each), %d already in %s",
             len(todo), cfg.nuclei.target_mpp, cfg.nuclei.max_tiles_per_slide or "all", len(carry), NUCLEI)
    transform = None
    if stain_params:
        todo = stain.attach(todo)
        transform = {"method": cfg.stain.method, "reference": stain.reference.tolist(), "io": cfg.stain.io,
                     "beta": cfg.stain.beta}
    old = _lineage(store, NUCLEI, prev)
    lineage = ([{**sources[s["slide_id"]], **(stain.lineage(s["slide_id"]) if stain_params else {})} for s in todo]
               + [{**sources[c], **{k: old[c][k] for k in ("stain",) if k in old.get(c, {})}} for c in carry])
    params = {"nuclei_key": key, **({"stain": stain_params} if stain_params else {})}
    t0 = time.perf_counter()
    with pipeline_context(object_store_limit_mb=cfg.object_store_limit_mb,
                          reserve_op_resources=cfg.reserve_op_resources), \
            ProgressLog(n_slides=len(todo), interval_s=cfg.progress_interval_s, label="wsi nuclei") as progress:
        sink = TileEmbeddingSink(store, NUCLEI, params=params, sources=lineage,
                                 carry_from=prev if carry else None, carry_bags=carry,
                                 rows_per_file=cfg.rows_per_file, progress=progress)
        if todo:
            nuclei_dataset(todo, spec=cfg.tiling(), cfg=cfg.nuclei, source=source, limits=cfg.limits(),
                           progress=progress, resources=cfg.read_resources, stain=transform).write_datasink(sink)
        else:
            sink.commit([])
    seconds = time.perf_counter() - t0
    uris = {s["slide_id"]: s["uri"] for s in todo}
    for sid, (pid, reason) in sorted(sink.failures.items()):
        label = sources[sid]["uri"] if sid in sources else sid
        report.fail(item=label, patient_id=pid, reason="nuclei: " + _named(reason, uris.get(sid, ""), label),
                    slide_id=sid)
    n_tiles = sum(sink.rows_per_slide.values())
    report.notes.append(f"nuclei: {len(sink.rows_per_slide)} slide(s), {n_tiles} tiles segmented in {seconds:.1f} s "
                        f"({n_tiles / max(seconds, 1e-9):.1f} tiles/s)")
    log.info("wsi nuclei: %s", report.notes[-1])
    return sink.version or prev


def read_tiles(store, *, version: str, threshold: float | None = None) -> tuple[pd.DataFrame, str | None]:
    """``(per-tile rows of wsi_nuclei@version without the per-nucleus lists, tumour version used)``; with a
    threshold and a ``wsi_tumour`` group, only tiles whose tumour probability reaches it."""
    from mmray.ingest.wsi_aggregates import read_arrow

    table = read_arrow(store, NUCLEI, version=version)
    tiles = table.drop_columns([c for c in LIST_COLUMNS if c in table.column_names]).to_pandas()
    if threshold is None or store.latest(TUMOUR) is None:
        return tiles, None
    tumour_version = store.latest(TUMOUR)
    tum = read_arrow(store, TUMOUR, version=tumour_version).to_pandas()
    if "scale" in tum.columns:
        tum = tum[tum["scale"] == "tile"]
    tum = tum[["slide_id", "x", "y", TUMOUR_COLUMN]].drop_duplicates(["slide_id", "x", "y"])
    tiles = tiles.merge(tum, on=["slide_id", "x", "y"], how="left")
    # slides the filter never scored keep every tile: no score is no evidence against a tile; a slide none of
    # whose tiles passes keeps them all too (the filter found no tumour there: describe the slide, not nothing)
    scored = set(tum["slide_id"])
    passing = tiles[TUMOUR_COLUMN] >= threshold
    some = passing.groupby(tiles["slide_id"]).transform("any")
    keep = ~tiles["slide_id"].isin(scored) | passing | ~some
    return tiles[keep].drop(columns=[TUMOUR_COLUMN]), tumour_version


def update_nuclei_aggregates(store, *, nuclei_version: str, threshold: float | None = None,
                             force: bool = False) -> dict[str, str]:
    """Rewrite ``wsi_nuclei_slide`` and ``wsi_nuclei_patient`` unless current; returns ``{group: version}``."""
    from mmray.features.nuclei_aggregate import patient_table, slide_table

    tumour_version = store.latest(TUMOUR) if threshold is not None else None
    params = {"nuclei_version": nuclei_version, "tumour_version": tumour_version, "tumour_threshold": threshold}
    prev = store.latest(NUCLEI_SLIDES)
    if prev is not None and not force and store.manifest(NUCLEI_SLIDES, version=prev)["params"] == params \
            and store.latest(NUCLEI_PATIENTS) is not None:
        return {}
    tiles, _ = read_tiles(store, version=nuclei_version, threshold=threshold)
    if tiles.empty:
        log.warning("wsi nuclei: no tile passed the tumour filter (threshold %s): no nucleus aggregates", threshold)
        return {}
    slides = slide_table(tiles)
    out = {NUCLEI_SLIDES: store.write_table(NUCLEI_SLIDES, slides, params=params, kind="bag", bag_key="slide_id")}
    out[NUCLEI_PATIENTS] = store.write_table(NUCLEI_PATIENTS, patient_table(slides),
                                             params={**params, "slide_version": out[NUCLEI_SLIDES]})
    return out
