"""Report sections with slide heatmaps: HEEC's important extremum features, and PORPOISE's tile attention.

Extremum features: HEEC's gain per slide feature (mean over the folds of
its best run with slide features) is traced, for the top located features
(``tile|region _ max|min _ i``), to the tile or region that gave each
patient's max/min (the ``wsi_patient`` arg-coordinates,
:func:`mmray.models.heec.trace_importances`).  The gains of features located
at the same place add up: the colour of a box is how much of the model's
important slide evidence comes from there for that patient.

Attention: the per-tile attention weights the train run saved for its
held-out patients (``attention.parquet``, :mod:`mmray.train.attention`).

Shown for the held-out patients with the highest and the lowest predicted
risk of the model in question.
"""

from __future__ import annotations

import html
import re

import numpy as np
import pandas as pd

from mmray.models.heec import default_feature_of, trace_importances
from mmray.report import render
from mmray.report.document import InputMissing, figure, para
from mmray.report.heatmaps import heat_grid, heatmap_figure, peak_level0, read_thumbnail
from mmray.report.inputs import PATIENTS, TILES, TrainRun

NUCLEI_PATIENTS = "wsi_nuclei_patient"
from mmray.report.performance import KEY, best_row, fold_ranked_risk, of_row
from mmray.store import FeatureStore
from mmray.store.manifest import schema_of

_LOCATED = re.compile(r"^(tile|region)_(max|min)_(\d+)$")
DEFAULT_SIZES = {"tile": 256.0, "region": 4096.0}  # level-0 pixels at 0.5 mpp on a 0.25-mpp scan: rough fallback


def _retrain(run: TrainRun, models: str) -> str:
    return f"mmray train --config ray_jobs/configs/train.yaml --store {run.meta.get('store', 'STORE')} '{models}'"


def heec_gain(run: TrainRun) -> tuple[pd.Series, pd.Series]:
    """``(mean gain per model column over the folds, summary row)`` of the best HEEC run with slide features."""
    def heec_on_slides(s: pd.DataFrame) -> pd.Series:
        return (s["model"] == "heec") & s["modalities"].astype(str).str.split(",").apply(lambda m: "slide" in m)

    row = best_row(run.summary, where=heec_on_slides)
    if row is None or run.importances is None or run.importances.empty:
        tried = heec_on_slides(run.summary).any()
        what = ("HEEC on slide features finished no fold (the errors are in its results.parquet)" if tried
                else "has no HEEC model on a modality set with slide features")
        raise InputMissing(f"train run {run.name}: {what}", _retrain(run, "models=[{name: heec, sets: [slide]}]"))
    imp = of_row(run.importances, row)
    gain = imp.groupby("feature")["gain"].sum() / max(int(row["n_folds_ok"]), 1)  # absent in a fold = 0 gain
    return gain.sort_values(ascending=False, kind="stable"), row


def extremum_coords(store: FeatureStore, columns: list[str]) -> pd.DataFrame:
    """One row per (patient, located feature): ``patient_id, slide_id, feature, scale, x, y`` from
    ``wsi_patient`` (tile/region embedding extrema) and ``wsi_nuclei_patient`` (nucleus-feature extrema, the
    tile that gave them)."""
    parsed, nuclei = {}, []
    for c in columns:
        name = default_feature_of(c)
        if name and _LOCATED.match(name):
            scale, stat, i = _LOCATED.match(name).groups()
            parsed[name] = (scale, stat, int(i))
        elif name:
            nuclei.append(name)
    rows = _nucleus_coords(store, nuclei)
    if not parsed:
        return pd.DataFrame(rows, columns=["patient_id", "slide_id", "feature", "scale", "x", "y"])
    need = sorted({f"{s}_arg{st}_{a}" for s, st, _ in parsed.values() for a in ("x", "y", "slide")})
    table = store.read_table(PATIENTS, columns=["patient_id", *need])
    for rec in table.to_dict("records"):
        for name, (scale, stat, i) in parsed.items():
            x, y = int(rec[f"{scale}_arg{stat}_x"][i]), int(rec[f"{scale}_arg{stat}_y"][i])
            if x < 0 or y < 0:  # the patient has no tile at this scale
                continue
            rows.append({"patient_id": str(rec["patient_id"]), "slide_id": str(rec[f"{scale}_arg{stat}_slide"][i]),
                         "feature": name, "scale": scale, "x": x, "y": y})
    return pd.DataFrame(rows, columns=["patient_id", "slide_id", "feature", "scale", "x", "y"])


def _nucleus_coords(store: FeatureStore, names: list[str]) -> list[dict]:
    """Rows like :func:`extremum_coords`'s for nucleus features (``nuclei_<f>_<max|min>``)."""
    if not names or NUCLEI_PATIENTS not in store.groups():
        return []
    from mmray.features.nuclei_aggregate import located_features

    table = store.read_table(NUCLEI_PATIENTS)
    located = located_features(table, id_col="patient_id")
    located = located[located["feature"].isin(set(names))]
    return [{"patient_id": str(r.patient_id), "slide_id": str(r.slide_id), "feature": r.feature, "scale": "tile",
             "x": int(r.x), "y": int(r.y)} for r in located.itertuples(index=False)]


def on_tissue(store: FeatureStore, locs: pd.DataFrame, slide_id: str) -> pd.Series:
    """(N,) bool: each location (``scale, x, y``) is a tile or region the WSI stage planned on tissue."""
    try:
        rows = store.read_bag(TILES, slide_id, columns=["scale", "x", "y"])
    except Exception:  # noqa: BLE001  no tiles group or bag: nothing to check against, keep them
        return pd.Series(True, index=locs.index)
    planned = set(zip(rows["scale"].astype(str), rows["x"].astype(int), rows["y"].astype(int)))
    return pd.Series([k in planned for k in zip(locs["scale"].astype(str), locs["x"].astype(int),
                                                 locs["y"].astype(int))], index=locs.index)


def box_sizes(store: FeatureStore, slide_id: str) -> dict[str, float]:
    """Level-0 box size per scale of one slide, from its ``wsi_tiles`` rows."""
    try:
        names = set(schema_of(store.manifest(TILES)).names)
        cols = [c for c in ("scale", "size_l0", "tile_px") if c in names]
        rows = store.read_bag(TILES, slide_id, columns=cols)
    except Exception:  # noqa: BLE001  no tiles group or no such bag: the defaults still draw something
        return dict(DEFAULT_SIZES)
    size = rows["size_l0"] if "size_l0" in rows else rows.get("tile_px")
    if size is None or rows.empty:
        return dict(DEFAULT_SIZES)
    scales = rows["scale"] if "scale" in rows else pd.Series("tile", index=rows.index)
    return {**DEFAULT_SIZES, **{str(s): float(v) for s, v in size.groupby(scales).median().items()}}


def pick_patients(preds: pd.DataFrame, candidates: set[str], n: int = 2) -> list[tuple[str, str]]:
    """``[(patient_id, why)]``: the held-out patients with the highest and lowest predicted risk."""
    p = preds[preds["patient_id"].astype(str).isin(candidates)] if len(preds) else preds
    if p is None or p.empty or "risk" not in p:
        return [(pid, "") for pid in sorted(candidates)[:n]]
    p = p.assign(rank=fold_ranked_risk(p)).sort_values(["rank", "patient_id"], ascending=[False, True])
    top = f"highest predicted risk (percentile {p['rank'].iloc[0]:.0%} in its test fold)"
    picks = [(str(p["patient_id"].iloc[0]), top)]
    if n > 1 and len(p) > 1:
        picks.append((str(p["patient_id"].iloc[-1]), f"lowest predicted risk (percentile {p['rank'].iloc[-1]:.0%})"))
    return picks


def _slide_figure(*, boxes: pd.DataFrame, uri: str | None, title: str, label: str, cmap: str,
                  attrs: dict, marks: pd.DataFrame | None = None, max_px: int = 1024) -> str:
    extent = (float((boxes["x"] + boxes["size"]).max()), float((boxes["y"] + boxes["size"]).max()))
    thumb = read_thumbnail(uri, max_px=max_px, extent=extent)
    grid = heat_grid(boxes, shape=thumb.rgb.shape[:2], downsample=thumb.downsample)
    peak = peak_level0(grid, thumb.downsample)
    fig = heatmap_figure(thumb, grid, title=title, label=label, cmap=cmap, marks=marks)
    attrs = {**attrs, "downsample": f"{thumb.downsample[0]:.6g}",
             "peak-x": f"{peak[0]:.1f}" if peak else "", "peak-y": f"{peak[1]:.1f}" if peak else ""}
    caption = html.escape(title) + (f" <b>No thumbnail:</b> {html.escape(thumb.note)}" if thumb.note else "")
    return figure(fig, alt=title, caption=caption, attrs=attrs)


def extremum_section(store: FeatureStore, run: TrainRun, uris: dict[str, str], *, top_k: int = 10,
                     n_patients: int = 2) -> list[str]:
    if PATIENTS not in store.groups():
        raise InputMissing(f"no {PATIENTS} group in {store.uri}",
                           f"mmray ingest --cohort COHORT.yaml --store {store.uri} --modalities wsi")
    gain, row = heec_gain(run)
    located = [c for c in gain.index if default_feature_of(c) and gain[c] > 0][:top_k]
    if not located:
        raise InputMissing(f"HEEC ({row['modality_set']}) gave no located slide feature (tile/region max/min) any "
                           f"gain in run {run.name}", _retrain(run, "models=[{name: heec, sets: [slide]}]"))
    traced = trace_importances(gain[located], extremum_coords(store, located), top_k=top_k)
    preds = of_row(run.predictions, row)
    body = [para(f"HEEC on <b>{html.escape(row['modality_set'])}</b>: its {len(located)} most important located "
                 f"slide features (extremum encoding: the max or min of one embedding dimension or nucleus "
                 f"feature over a slide's tissue tiles or regions) traced to the tile or region that gave each "
                 f"value; only tiles and regions on tissue exist, so every location is on tissue. A box's colour "
                 f"is the "
                 f"summed mean gain of the features located there; numbered outlines are the top locations."),
            render.table([{"feature": c, "gain": float(gain[c])} for c in located],
                         [("feature", "feature"), ("gain", "mean gain over folds")])]
    for pid, why in pick_patients(preds, set(traced["patient_id"]), n_patients):
        mine = traced[traced["patient_id"] == pid]
        for slide_id, t in mine.groupby("slide_id", sort=True):
            sizes = box_sizes(store, slide_id)
            locs = (t.groupby(["scale", "x", "y"], as_index=False)
                    .agg(value=("importance", "sum"), features=("feature", lambda f: ", ".join(sorted(f))))
                    .sort_values("value", ascending=False, kind="stable").reset_index(drop=True))
            locs["size"] = locs["scale"].map(sizes).astype(float)
            tissue = on_tissue(store, locs, slide_id)
            if not tissue.all():  # cannot happen for plans made on tissue; said, never drawn
                body.append(para(f"{int((~tissue).sum())} location(s) of {html.escape(slide_id)} are not tissue tiles "
                                 f"or regions of wsi_tiles and are not drawn."))
                locs = locs[tissue].reset_index(drop=True)
            if locs.empty:
                continue
            body.append(f"<h3>{html.escape(pid)} &middot; {html.escape(slide_id)}</h3>"
                        + (para(html.escape(why)) if why else ""))
            body.append(_slide_figure(boxes=locs, uri=uris.get(slide_id), title=f"{slide_id}: extremum features",
                                      label="summed gain", cmap="inferno", marks=locs.head(5),
                                      attrs={"kind": "extremum", "slide": slide_id, "patient": pid}))
            body.append(render.table([{"rank": k + 1, **r} for k, r in enumerate(locs.head(5).to_dict("records"))],
                                     [("rank", "#"), ("scale", "scale"), ("x", "x (level 0)"),
                                      ("y", "y (level 0)"), ("value", "summed gain"), ("features", "features")]))
    return body


def attention_section(store: FeatureStore, run: TrainRun, uris: dict[str, str], *, n_patients: int = 2) -> list[str]:
    att = run.attention
    if att is None or att.empty:
        raise InputMissing(f"train run {run.name} saved no tile attention (no attention-MIL model was trained)",
                           _retrain(run, "models=[{name: porpoise, sets: [path_omics]}]"))
    keys = set(map(tuple, att[list(KEY)].drop_duplicates().to_numpy()))
    row = best_row(run.summary, where=lambda s: [tuple(k) in keys for k in s[list(KEY)].to_numpy()])
    if row is None:
        raise InputMissing(f"the attention model of run {run.name} has no finished fold",
                           _retrain(run, "models=[{name: porpoise, sets: [path_omics]}]"))
    a, preds = of_row(att, row), of_row(run.predictions, row)
    body = [para(f"Gated attention-MIL weights of <b>{html.escape(row['model'])}</b> on "
                 f"<b>{html.escape(row['modality_set'])}</b> for held-out patients: each tile is coloured by its "
                 f"attention weight (a patient's weights sum to 1 over all its tiles); the outline marks the "
                 f"tile with the most attention.")]
    for pid, why in pick_patients(preds, set(a["patient_id"].astype(str)), n_patients):
        mine = a[a["patient_id"].astype(str) == pid]
        for slide_id, t in mine.groupby("slide_id", sort=True):
            sizes = box_sizes(store, slide_id)
            size = t["size_l0"].astype(float).fillna(sizes["tile"]) if "size_l0" in t else sizes["tile"]
            boxes = pd.DataFrame({"x": t["x"].to_numpy(), "y": t["y"].to_numpy(), "size": np.asarray(size, float),
                                  "value": t["attention"].to_numpy(float)})
            top = boxes.sort_values("value", ascending=False, kind="stable").head(1)
            body.append(f"<h3>{html.escape(pid)} &middot; {html.escape(slide_id)}</h3>"
                        + para(html.escape(f"{why}; {len(boxes)} tiles, top attention {top['value'].iloc[0]:.3g} "
                                           f"at ({int(top['x'].iloc[0])}, {int(top['y'].iloc[0])})")))
            body.append(_slide_figure(boxes=boxes, uri=uris.get(slide_id), title=f"{slide_id}: attention",
                                      label="attention weight", cmap="viridis", marks=top,
                                      attrs={"kind": "attention", "slide": slide_id, "patient": pid}))
    return body
