"""Slide and patient aggregates of per-tile nucleus features: ``wsi_nuclei_slide``, ``wsi_nuclei_patient``.

Per slide (one row)::

    slide_id, patient_id, event_time, n_tiles, n_nuclei, tissue_mm2
    nuclei_per_mm2                     nuclei (clumps counted by area) per mm^2 of the sampled tiles' tissue
    <f>_mean, <f>_max, <f>_min         for every tile feature f (mmray.features.nuclei_graph.TILE_FEATURES)
    <f>_argmax_x, <f>_argmax_y,        level-0 corner of the tile giving the max / min (extremum encoding,
    <f>_argmin_x, <f>_argmin_y         as for the tile embeddings in wsi_slide), -1 when every tile is NaN

Per patient the same, pooled over the patient's slides: sums for counts and
areas (so ``nuclei_per_mm2`` is over all tissue), tile-weighted means, the
max of maxes with ``<f>_argmax_slide`` naming the slide (ties: first slide
id, then first tile in reading order).  NaN (a tile with no nuclei has no
morphometry) is skipped, never propagated.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mmray.features.nuclei_graph import TILE_FEATURES

ARGS = ("argmax_x", "argmax_y", "argmin_x", "argmin_y")


def _extremum(values: np.ndarray, x: np.ndarray, y: np.ndarray, *, high: bool) -> tuple[float, int, int]:
    ok = np.flatnonzero(~np.isnan(values))
    if ok.size == 0:
        return np.nan, -1, -1
    v = values[ok]
    best = ok[int(np.argmax(v) if high else np.argmin(v))]
    return float(values[best]), int(x[best]), int(y[best])


def slide_row(tiles: pd.DataFrame) -> dict:
    """The aggregate row of one slide's tiles (columns of the ``wsi_nuclei`` group)."""
    tiles = tiles.sort_values(["y", "x"], kind="stable")  # reading order: ties go to the first tile
    x, y = tiles["x"].to_numpy(np.int64), tiles["y"].to_numpy(np.int64)
    tissue = float(tiles["tissue_mm2"].sum())
    n_est = float(tiles["n_nuclei_est"].sum())
    row = {"slide_id": tiles["slide_id"].iloc[0], "patient_id": tiles["patient_id"].iloc[0],
           "event_time": tiles["event_time"].iloc[0], "n_tiles": len(tiles), "n_nuclei": n_est,
           "tissue_mm2": tissue, "nuclei_per_mm2": n_est / tissue if tissue > 0 else np.nan}
    for f in TILE_FEATURES:
        v = tiles[f].to_numpy(np.float64)
        row[f"{f}_mean"] = float(np.nanmean(v)) if np.isfinite(v).any() else np.nan
        row[f"{f}_max"], row[f"{f}_argmax_x"], row[f"{f}_argmax_y"] = _extremum(v, x, y, high=True)
        row[f"{f}_min"], row[f"{f}_argmin_x"], row[f"{f}_argmin_y"] = _extremum(v, x, y, high=False)
    return row


def slide_table(tiles: pd.DataFrame) -> pd.DataFrame:
    """One aggregate row per slide of a ``wsi_nuclei`` table (sorted by slide_id)."""
    rows = [slide_row(g) for _, g in tiles.groupby("slide_id", sort=True)]
    return pd.DataFrame(rows)


def patient_table(slides: pd.DataFrame) -> pd.DataFrame:
    """One row per patient from :func:`slide_table` rows (see the module docstring)."""
    out = []
    for pid, g in slides.groupby("patient_id", sort=True):
        g = g.sort_values("slide_id", kind="stable")
        n_tiles = g["n_tiles"].to_numpy(np.float64)
        tissue, n = float(g["tissue_mm2"].sum()), float(g["n_nuclei"].sum())
        row = {"patient_id": pid, "event_time": g["event_time"].max(), "n_slides": len(g),
               "slide_ids": g["slide_id"].tolist(), "n_tiles": int(n_tiles.sum()), "n_nuclei": n,
               "tissue_mm2": tissue, "nuclei_per_mm2": n / tissue if tissue > 0 else np.nan}
        for f in TILE_FEATURES:
            means = g[f"{f}_mean"].to_numpy(np.float64)
            ok = ~np.isnan(means)
            row[f"{f}_mean"] = float(np.average(means[ok], weights=n_tiles[ok])) if ok.any() and \
                n_tiles[ok].sum() > 0 else np.nan
            for stat, high in (("max", True), ("min", False)):
                v = g[f"{f}_{stat}"].to_numpy(np.float64)
                ok = np.flatnonzero(~np.isnan(v))
                if ok.size == 0:
                    row.update({f"{f}_{stat}": np.nan, f"{f}_arg{stat}_x": -1, f"{f}_arg{stat}_y": -1,
                                f"{f}_arg{stat}_slide": ""})
                    continue
                best = ok[int(np.argmax(v[ok]) if high else np.argmin(v[ok]))]
                row.update({f"{f}_{stat}": float(v[best]), f"{f}_arg{stat}_x": int(g[f"{f}_arg{stat}_x"].iloc[best]),
                            f"{f}_arg{stat}_y": int(g[f"{f}_arg{stat}_y"].iloc[best]),
                            f"{f}_arg{stat}_slide": g["slide_id"].iloc[best]})
        out.append(row)
    return pd.DataFrame(out)


def located_features(table: pd.DataFrame, *, id_col: str = "slide_id") -> pd.DataFrame:
    """One row per (row of ``table``, extremum feature): ``<id_col>, slide_id, feature, x, y`` with
    ``feature`` named ``nuclei_<f>_<max|min>`` (the name HEEC tracing uses for nucleus columns)."""
    rows = []
    for _, r in table.iterrows():
        for f in TILE_FEATURES:
            for stat in ("max", "min"):
                x, y = r.get(f"{f}_arg{stat}_x", -1), r.get(f"{f}_arg{stat}_y", -1)
                if x is None or int(x) < 0:
                    continue
                slide = r[f"{f}_arg{stat}_slide"] if f"{f}_arg{stat}_slide" in r else r["slide_id"]
                rows.append({id_col: r[id_col], "slide_id": slide, "feature": f"nuclei_{f}_{stat}",
                             "x": int(x), "y": int(y)})
    cols = [id_col, "slide_id", "feature", "x", "y"] if id_col != "slide_id" else ["slide_id", "feature", "x", "y"]
    return pd.DataFrame(rows, columns=cols)
