"""What an explanation reads from the store: a patient's feature row, and the slide locations behind it.

A patient's row: for each feature group the model reads (``clinical`` for
``clinical__age``, ``expression`` for a signature model's genes), the
patient's latest row of that group's latest version, as the served model
takes it (``<group>__<column>`` values, ``has_<group>`` 1/0, NaN where the
group or the column is absent: a missing modality, never zero-filled).

Slide locations: a located slide feature (``wsi_patient__tile_max_17``: the
max of one embedding dimension over a patient's tiles) points at the tile
that gave the patient's value (``wsi_patient`` arg-coordinates, as the
report's extremum heatmaps); a MIL attention model's saved weights point at
the patient's most attended tiles. Both are ``slide_id`` + level-0 ``x, y``
with the box size (the ids are the store's: pseudonyms when pseudonymised).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from mmray.errors import DataError
from mmray.report.explain import FLAG, column_of, feature_groups
from mmray.store import FeatureStore

log = logging.getLogger(__name__)


def resolve_patients(store_ids: set[str], given: list[str]) -> tuple[list[str], list[str]]:
    """``(store ids, unknown)``: each given id as the store knows it (itself, or its pseudonym with a key)."""
    from mmray.ingest.pseudonym import is_pseudonymised, pseudonymiser_from_env

    key = pseudonymiser_from_env()
    found, unknown = [], []
    for pid in given:
        if pid in store_ids:
            found.append(pid)
        elif is_pseudonymised(key) and key(pid) in store_ids:
            found.append(key(pid))
        else:
            unknown.append(pid)
    return found, unknown


def _latest_rows(table: pd.DataFrame, patients: list[str]) -> pd.DataFrame:
    t = table[table["patient_id"].astype(str).isin(patients)]
    if "event_time" in t:
        t = t.sort_values("event_time", kind="stable")
    t = t.drop_duplicates("patient_id", keep="last")
    return t.set_index(t["patient_id"].astype(str).to_numpy())


def patient_rows(store: FeatureStore, features: list[str], patients: list[str], *,
                 default_group: str = "expression") -> tuple[np.ndarray, dict[str, list[str]]]:
    """``(x [n, F] in feature order, {patient: groups the store has no row of})`` (module doc)."""
    groups = feature_groups(features, default_group=default_group)
    have = set(store.groups())
    x = np.full((len(patients), len(features)), np.nan)
    missing: dict[str, list[str]] = {p: [] for p in patients}
    for g, idx in groups.items():
        rows = pd.DataFrame()
        if g in have and store.manifest(g).get("kind") != "bag":
            cols = sorted({column_of(features[j]) for j in idx if not features[j].startswith(FLAG)})
            present_cols = [c for c in cols if c in set(_schema_names(store, g))]
            rows = _latest_rows(store.read_table(g, columns=["patient_id", "event_time", *present_cols]), patients)
        for i, p in enumerate(patients):
            if p not in rows.index:
                missing[p].append(g)
                for j in idx:
                    x[i, j] = 0.0 if features[j] == FLAG + g else np.nan
                continue
            rec = rows.loc[p]
            for j in idx:
                f = features[j]
                if f == FLAG + g:
                    x[i, j] = 1.0
                else:
                    x[i, j] = _number(rec.get(column_of(f)))
    return x, missing


def _schema_names(store: FeatureStore, group: str) -> list[str]:
    from mmray.store.manifest import schema_of

    return list(schema_of(store.manifest(group)).names)


def _number(v) -> float:
    try:
        out = float(v)
    except (TypeError, ValueError):
        return np.nan
    return out if np.isfinite(out) else np.nan


def extremum_links(store: FeatureStore, patient: str, effects: list[dict]) -> list[dict]:
    """Slide locations of the located slide features among ``effects`` (``top_features`` rows)."""
    from mmray.models.heec import default_feature_of
    from mmray.report.inputs import PATIENTS
    from mmray.report.slide_sections import box_sizes, extremum_coords

    located = [e for e in effects if default_feature_of(e["feature"])]
    if not located or PATIENTS not in store.groups():
        return []
    coords = extremum_coords(store, [e["feature"] for e in located])
    coords = coords[coords["patient_id"] == patient]
    by_name = {default_feature_of(e["feature"]): e for e in located}
    out, sizes = [], {}
    for rec in coords.to_dict("records"):
        e = by_name[rec["feature"]]
        if rec["slide_id"] not in sizes:
            sizes[rec["slide_id"]] = box_sizes(store, rec["slide_id"])
        out.append({"kind": "extremum", "feature": e["feature"], "contribution": e["contribution"],
                    "direction": e["direction"], "slide_id": rec["slide_id"], "scale": rec["scale"],
                    "x": int(rec["x"]), "y": int(rec["y"]), "size_l0": float(sizes[rec["slide_id"]][rec["scale"]])})
    return sorted(out, key=lambda r: -abs(r["contribution"]))


def attention_links(store: FeatureStore, patient: str, *, model: str | None = None, top_k: int = 5) -> list[dict]:
    """The patient's most attended tiles in the newest train run that saved attention for them
    (of ``model``, e.g. ``porpoise``, when given)."""
    from mmray.report.document import InputMissing
    from mmray.report.inputs import load_train_run, train_runs

    for _, name in reversed(train_runs(store)):
        try:
            att = load_train_run(store, name).attention
        except (InputMissing, OSError, ValueError):
            continue
        if att is None or att.empty:
            continue
        mine = att[att["patient_id"].astype(str) == patient]
        if model is not None and "model" in mine:
            mine = mine[mine["model"].astype(str) == model]
        if mine.empty:
            continue
        mine = mine.sort_values("attention", ascending=False, kind="stable").head(top_k)
        return [{"kind": "attention", "train_run": name, "model": str(r.get("model", "")),
                 "slide_id": str(r["slide_id"]), "x": int(r["x"]), "y": int(r["y"]),
                 "size_l0": float(r["size_l0"]) if "size_l0" in r and pd.notna(r["size_l0"]) else None,
                 "attention": float(r["attention"])} for r in mine.to_dict("records")]
    return []


def slide_links(store: FeatureStore, patient: str, effects: list[dict], *, model: str | None) -> list[dict]:
    """Extremum and attention locations behind a patient's explanation (failures logged, never raised).

    Attention only of the explained ``model`` (its family name, e.g. ``porpoise``): another model's
    attention says nothing about why this one predicts what it does."""
    links = []
    fns = [lambda: extremum_links(store, patient, effects)]
    if model:
        fns.append(lambda: attention_links(store, patient, model=model))
    for fn in fns:
        try:
            links += fn()
        except (DataError, OSError, KeyError, ValueError) as e:
            log.warning("explain: slide locations unavailable (%s: %s)", type(e).__name__, e)
    for link in links:  # where `mmray view --store S` shows it: that slide, zoomed to the box, overlay on
        link["viewer"] = viewer_link(link)
    return links


def viewer_link(link: dict) -> str:
    """The slide viewer's address of a location (relative to where ``mmray view`` serves)."""
    from urllib.parse import urlencode

    size = link.get("size_l0") or 256.0
    return "/#" + urlencode({"slide": link["slide_id"], "x": int(link["x"]), "y": int(link["y"]),
                             "size": int(size), "overlay": link["kind"]})
