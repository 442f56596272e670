"""The tumour-tile filter in WSI ingest: annotations -> positive-unlabeled fit -> ``wsi_tumour``.

Runs after the embedding and nuclei passes of :func:`mmray.ingest.wsi.ingest_wsi`
when ``wsi.tile_filter.enabled`` is set and at least one slide has an
annotation (manifest column ``annotation``: a QuPath GeoJSON file; its path is
an input path like the slide's: never written, named by its source label in
lineage and failures).  Without annotations the filter is off, every tile is
kept, and the run's notes say so.

``wsi_tumour`` (bag group, bag key ``slide_id``; one row per tile and region of
``wsi_tiles``): keys, ``scale``, ``x``, ``y``, ``size_l0``,
``tumour_probability`` (a region: the max of its tiles), ``annotated``
(fraction of the tile inside the slide's tumour outline; NaN on slides
without an annotation) and ``fold`` (the fold whose model scored an annotated
slide; -1 otherwise).  Its params hold the filter settings, the threshold, the
input versions and per-fold Elkan-Noto ``c``; a rerun with the same inputs,
annotations and settings writes nothing.  The classifier
(:mod:`mmray.features.tile_filter`) sees the tile embedding and, where the
nuclei pass measured the tile, its nucleus features.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pandas as pd
import pyarrow as pa

from mmray import uri as uri_mod
from mmray.errors import InputError
from mmray.features import tile_filter as tf
from mmray.features.nuclei_graph import TILE_FEATURES
from mmray.ingest.pseudonym import source_label

log = logging.getLogger(__name__)

TUMOUR, COLUMN = "wsi_tumour", "tumour_probability"
MAX_FIT_TILES = 60000  # unlabeled tiles of unannotated slides beyond this are sampled for fitting


def _annotations(ctx, slides: list[dict], report) -> tuple[dict[str, list], list[dict]]:
    """``({slide_id: polygons}, lineage)`` of the slides' readable annotations; unreadable ones are failures."""
    cfg = ctx.config.tile_filter
    polys, lineage = {}, []
    for s in slides:
        ann = s.get("annotation")
        if not ann:
            continue
        label = source_label(ctx.patient_key, ann)
        try:
            with uri_mod.open_input(ann) as f:
                text = f.read().decode("utf-8")
            polys[s["slide_id"]] = tf.read_annotation(text, classes=cfg.classes, name=label)
            lineage.append({**uri_mod.checksum(ann), "uri": label, "slide_id": s["slide_id"], "kind": "annotation"})
        except (OSError, UnicodeDecodeError, InputError) as e:
            reason = str(e).replace(str(ann), label)
            report.fail(item=label, patient_id=s["patient_id"], slide_id=s["slide_id"],
                        reason=f"tile filter: annotation of slide {s['slide_id']} unreadable ({reason}); the slide "
                               f"counts as unannotated")
    return polys, lineage


def _nucleus_features(store) -> tuple[pd.DataFrame | None, str | None]:
    from mmray.ingest.wsi_aggregates import read_arrow
    from mmray.ingest.wsi_nuclei import NUCLEI

    version = store.latest(NUCLEI)
    if version is None:
        return None, None
    cols = ["slide_id", "x", "y", *TILE_FEATURES]
    return read_arrow(store, NUCLEI, version=version, columns=cols).to_pandas(), version


def _features(tiles: pd.DataFrame, nuclei: pd.DataFrame | None) -> np.ndarray:
    """(N, D + F) float32: the tile embeddings then the nucleus features (NaN where not measured)."""
    emb = np.stack(tiles["embedding"].to_numpy()).astype(np.float32)
    if nuclei is None:
        return emb
    nuc = tiles[["slide_id", "x", "y"]].merge(nuclei, on=["slide_id", "x", "y"], how="left")
    return np.hstack([emb, nuc[list(TILE_FEATURES)].to_numpy(np.float32)])


def ingest_tumour(ctx, *, slides: list[dict], report, tiles_version: str) -> str | None:
    """Fit the filter and write ``wsi_tumour`` (or reuse the current version); None when the filter is off."""
    from mmray.ingest.wsi import TILES

    cfg, store = ctx.config.tile_filter, ctx.store
    if not cfg.enabled:
        report.notes.append("tile filter: off (wsi.tile_filter.enabled: false); every tile is kept")
        return None
    annotated_any = [s for s in slides if s.get("annotation")]
    if not annotated_any:
        msg = ("tile filter: no slide has an annotation (manifest column 'annotation', QuPath GeoJSON), so the "
               "tumour filter is off and every tile is kept")
        report.notes.append(msg)
        log.warning("wsi %s", msg)
        return None
    embedded = set(store.bag_ids(TILES, version=tiles_version))
    slides = [s for s in slides if s["slide_id"] in embedded]
    polys, lineage = _annotations(ctx, slides, report)
    nuclei, nuclei_version = _nucleus_features(store)
    digest = hashlib.sha256("".join(sorted(f"{e['slide_id']}:{e.get('sha256') or e.get('etag')}"
                                           for e in lineage)).encode()).hexdigest()
    key = {"filter": cfg.key(), "tiles_version": tiles_version, "nuclei_version": nuclei_version,
           "annotations": digest}
    prev = store.latest(TUMOUR)
    if prev is not None and not ctx.force and store.manifest(TUMOUR, version=prev)["params"].get("key") == key:
        return prev
    if not polys:
        report.notes.append("tile filter: no annotation could be read; the filter is off and every tile is kept")
        return None
    from mmray.ingest.wsi_aggregates import read_arrow

    cols = ["slide_id", "patient_id", "event_time", "scale", "x", "y", "size_l0", "region_id", "embedding"]
    table = read_arrow(store, TILES, version=tiles_version, columns=cols).to_pandas()
    tiles = table[table["scale"] == "tile"].reset_index(drop=True)
    patient_of = dict(zip(tiles["slide_id"], tiles["patient_id"]))
    annotated = sorted(s for s in polys if s in patient_of)
    frac = np.full(len(tiles), np.nan)
    for sid in annotated:
        rows = np.flatnonzero(tiles["slide_id"].to_numpy() == sid)
        t = tiles.iloc[rows]
        frac[rows] = tf.annotated_fraction(polys[sid], x=t["x"].to_numpy(), y=t["y"].to_numpy(),
                                           size=t["size_l0"].to_numpy())
    labelled = np.nan_to_num(frac) >= cfg.positive_fraction
    if labelled.sum() < cfg.min_positive_tiles:
        report.notes.append(f"tile filter: {int(labelled.sum())} tiles inside annotations, fewer than "
                            f"min_positive_tiles={cfg.min_positive_tiles}; the filter is off and every tile is kept")
        return None
    X = _features(tiles, nuclei)
    n_emb = len(tiles["embedding"].iloc[0])
    fit_rows = _fit_rows(tiles["slide_id"].to_numpy(), set(annotated), cfg.seed)
    fit = tf.fit_folds(X[fit_rows], labelled[fit_rows], slide=tiles["slide_id"].to_numpy()[fit_rows],
                       patient_of=patient_of, annotated=annotated, cfg=cfg, n_embedding=n_emb)
    prob = fit.predict(X, slide=tiles["slide_id"].to_numpy())
    tiles["tumour_probability"], tiles["annotated"] = prob, frac
    tiles["fold"] = [fit.fold_of_slide.get(s, -1) for s in tiles["slide_id"]]
    out = _with_regions(table, tiles)
    pos = labelled & (tiles["fold"].to_numpy() >= 0)
    params = {"key": key, "threshold": cfg.threshold, "n_slides": int(tiles["slide_id"].nunique()),
              "n_annotated_slides": len(annotated), "n_labelled_tiles": int(labelled.sum()),
              "c_per_fold": [round(c, 4) for c in fit.c], "n_folds": fit.n_folds,
              "oof_recall_of_labelled": round(float((prob[pos] >= cfg.threshold).mean()), 4) if pos.any() else None,
              "kept_fraction": round(float((prob >= cfg.threshold).mean()), 4)}
    version = store.write_table(TUMOUR, pa.Table.from_pandas(out, preserve_index=False), kind="bag",
                                bag_key="slide_id", params=params, sources=lineage)
    report.groups[TUMOUR] = version
    report.notes.append(f"tile filter: positive-unlabeled fit on {len(annotated)} annotated slide(s) "
                        f"({int(labelled.sum())} tumour tiles), {fit.n_folds} folds; {params['kept_fraction']:.0%} "
                        f"of tiles at tumour probability >= {cfg.threshold}; out-of-fold recall of annotated tumour "
                        f"tiles {params['oof_recall_of_labelled']}")
    log.info("wsi %s", report.notes[-1])
    return version


def _fit_rows(slide: np.ndarray, annotated: set[str], seed: int) -> np.ndarray:
    """Rows the classifier is fitted on: every tile of annotated slides, unlabeled tiles up to MAX_FIT_TILES."""
    ann = np.isin(slide, list(annotated))
    other = np.flatnonzero(~ann)
    if len(other) > MAX_FIT_TILES:
        other = np.sort(np.random.default_rng(seed).choice(other, MAX_FIT_TILES, replace=False))
    return np.sort(np.r_[np.flatnonzero(ann), other])


def _with_regions(table: pd.DataFrame, tiles: pd.DataFrame) -> pd.DataFrame:
    """Tile rows plus region rows (probability: the max of the region's tiles)."""
    keep = ["slide_id", "patient_id", "event_time", "scale", "x", "y", "size_l0"]
    regions = table[table["scale"] == "region"][keep + ["region_id"]]
    best = tiles.groupby(["slide_id", "region_id"])["tumour_probability"].max().rename("tumour_probability")
    regions = regions.join(best, on=["slide_id", "region_id"]).drop(columns=["region_id"])
    regions["annotated"], regions["fold"] = np.nan, -1
    out = pd.concat([tiles[keep + ["tumour_probability", "annotated", "fold"]], regions], ignore_index=True)
    out["tumour_probability"] = out["tumour_probability"].fillna(0.0).astype(np.float32)
    out["annotated"] = out["annotated"].astype(np.float32)
    out["fold"] = out["fold"].astype(np.int32)
    return out.sort_values(["slide_id", "scale", "y", "x"], kind="stable").reset_index(drop=True)


def kept_tiles(store, slide_id: str, *, version: str, threshold: float) -> set[tuple[str, int, int]] | None:
    """``{(scale, x, y)}`` of a slide's tiles and regions at or above ``threshold`` in ``wsi_tumour@version``;
    None when the slide is not in it (not scored: keep everything) or nothing passes (the filter found no
    tumour there: keep everything rather than lose the slide)."""
    try:
        rows = store.read_bag(TUMOUR, slide_id, version=version, columns=["scale", "x", "y", COLUMN])
    except Exception:  # noqa: BLE001  no such bag: a slide the filter never scored
        return None
    rows = rows[rows[COLUMN] >= threshold]
    if rows.empty:
        return None
    return set(zip(rows["scale"].astype(str), rows["x"].astype(int), rows["y"].astype(int)))
