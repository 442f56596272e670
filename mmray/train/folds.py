"""Cross-validation folds: stratified by event (and site), grouped by patient, seeded.

``make_folds`` returns one row per patient, ``(patient_id, fold)``, ready to
be saved as the store's ``folds`` group so every model trains on the same
splits.  Patients, not rows, are split: a patient with several label rows
lands in exactly one fold (``StratifiedGroupKFold``).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from mmray.errors import DataError

_TCGA = re.compile(r"^TCGA-([A-Z0-9]{2})-[A-Z0-9]{4}")


def site_from_barcode(patient_id: str) -> str | None:
    """TCGA tissue-source site (``TCGA-05-1000`` -> ``05``); None for other ids."""
    m = _TCGA.match(str(patient_id))
    return m.group(1) if m else None


def _sites(patients: pd.DataFrame, site_col: str | None, patient_col: str) -> pd.Series | None:
    if site_col is None:
        return None
    if site_col != "auto":
        if site_col not in patients.columns:
            raise DataError(f"site column {site_col!r} not in the table; columns: {list(patients.columns)[:20]}")
        return patients[site_col].astype(str)
    for c in ("site", "clinical__site", "tissue_source_site", "clinical__tissue_source_site"):
        if c in patients.columns:
            return patients[c].astype(str)
    sites = patients[patient_col].map(site_from_barcode)
    return sites if sites.notna().all() else None


def make_folds(table: pd.DataFrame, *, n_folds: int = 5, seed: int = 0, patient_col: str = "patient_id",
               event_col: str = "event", site_col: str | None = "auto") -> pd.DataFrame:
    """Assign every patient of ``table`` to one of ``n_folds`` folds.

    Stratified by event (a patient's event is True if any of its rows has
    one) crossed with site when there is one (``site_col``: a column name,
    ``"auto"`` = a ``site``-like column or the TCGA barcode's TSS code, or
    None).  Strata too small to spread over every fold fall back to the event
    alone.  Returns ``DataFrame[patient_id, fold]`` sorted by patient.
    """
    for c in (patient_col, event_col):
        if c not in table.columns:
            raise DataError(f"make_folds needs column {c!r}; the table has {list(table.columns)[:20]}")
    if table[patient_col].isna().any():
        raise DataError(f"{int(table[patient_col].isna().sum())} row(s) without {patient_col}")
    ev = table[event_col]
    if ev.isna().any():
        raise DataError(f"{int(ev.isna().sum())} row(s) with a missing {event_col}; drop them before splitting")
    rows = table.assign(_event=ev.astype(bool))
    first = rows.groupby(patient_col, sort=True).first()
    patients = first.reset_index()
    patients["_event"] = rows.groupby(patient_col, sort=True)["_event"].any().to_numpy()
    n = len(patients)
    if n_folds < 2:
        raise DataError(f"n_folds must be >= 2, got {n_folds}")
    if n < n_folds:
        raise DataError(f"{n} patients cannot fill {n_folds} folds")
    strata = patients["_event"].map({True: "event", False: "censored"})
    sites = _sites(patients, site_col, patient_col)
    if sites is not None:
        crossed = strata + "|" + sites
        counts = crossed.map(crossed.value_counts())
        strata = crossed.where(counts >= n_folds, strata + "|other")
        small = strata.map(strata.value_counts()) < n_folds
        strata = strata.where(~small, patients["_event"].map({True: "event", False: "censored"}))
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold = np.full(n, -1, dtype=int)
    ids = patients[patient_col].to_numpy()
    for k, (_, val) in enumerate(splitter.split(np.zeros(n), strata.to_numpy(), groups=ids)):
        fold[val] = k
    return pd.DataFrame({patient_col: ids, "fold": fold})


def split(table: pd.DataFrame, folds: pd.DataFrame, *, fold: int,
          patient_col: str = "patient_id") -> tuple[np.ndarray, np.ndarray]:
    """Row positions ``(train, val)`` of ``table`` for ``fold``; every patient must have a fold."""
    if fold not in set(folds["fold"]):
        raise DataError(f"fold {fold} not in folds {sorted(set(folds['fold']))}")
    mapping = folds.set_index(patient_col)["fold"]
    f = table[patient_col].map(mapping)
    if f.isna().any():
        missing = table.loc[f.isna(), patient_col].unique()[:5].tolist()
        raise DataError(f"{int(f.isna().sum())} row(s) have no fold, e.g. patients {missing}; remake the folds")
    f = f.to_numpy()
    return np.flatnonzero(f != fold), np.flatnonzero(f == fold)


FOLDS_GROUP = "folds"


def _folds_cover(folds: pd.DataFrame, patients, n_folds: int) -> bool:
    return set(map(str, patients)) <= set(folds["patient_id"].astype(str)) and folds["fold"].nunique() == n_folds


def load_or_make_folds(store, labels: pd.DataFrame, n_folds: int = 5, seed: int = 0, *,
                       labels_group: str = "labels", labels_version: str | None = None,
                       group: str = FOLDS_GROUP) -> tuple[pd.DataFrame, str]:
    """The store's saved folds for these labels, made and saved when none fit; ``(folds, version)``.

    Every model (CV runner, tuner, signature fan-out) calls this, so all of
    them score on the same splits.  A saved version of ``group`` is reused
    when its params match (``n_folds``, ``seed``, ``labels_group``,
    ``labels_version``; the newest matching version wins) and it assigns a
    fold to every patient of ``labels``; otherwise :func:`make_folds` runs on
    ``labels`` (patients without an event value are stratified as censored)
    and a new version ``patient_id, event_time, fold`` is written.
    ``labels_version`` defaults to the latest version of ``labels_group``.
    Returns ``DataFrame[patient_id, event_time, fold]``.
    """
    if labels_version is None:
        labels_version = store.latest(labels_group)
    want = {"n_folds": int(n_folds), "seed": int(seed), "labels_group": labels_group,
            "labels_version": labels_version}
    patients = labels["patient_id"].astype(str).unique()
    for version in reversed(store.versions(group)):
        params = store.manifest(group, version=version).get("params", {})
        if all(params.get(k) == v for k, v in want.items()):
            folds = store.read_table(group, version=version)
            if _folds_cover(folds, patients, n_folds):
                return folds, version
    rows = labels.assign(event=labels["event"].fillna(False).astype(bool)) if "event" in labels else \
        labels.assign(event=False)
    folds = make_folds(rows, n_folds=n_folds, seed=seed)
    if "event_time" in labels.columns:
        times = labels.assign(patient_id=labels["patient_id"].astype(str)).groupby("patient_id")["event_time"].min()
        folds["event_time"] = folds["patient_id"].astype(str).map(times).to_numpy()
    else:
        folds["event_time"] = pd.Timestamp("1970-01-01", tz="UTC")
    version = store.write_table(group, folds[["patient_id", "event_time", "fold"]],
                                params={**want, "made_by": "mmray.train.folds.make_folds"})
    return store.read_table(group, version=version), version


def inner_split(table: pd.DataFrame, *, val_fraction: float = 0.2, seed: int = 0, patient_col: str = "patient_id",
                event_col: str = "event") -> tuple[np.ndarray, np.ndarray]:
    """Row positions ``(fit, val)`` of a training fold: a patient-grouped, event-stratified inner split.

    The validation part (early stopping, model selection) comes from the
    training fold only, never from the test fold.  ``val_fraction`` is
    rounded to one of ``1/k`` folds (``k >= 2``).
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    k = max(2, round(1.0 / val_fraction))
    rows = table.assign(**{event_col: table[event_col].fillna(False).astype(bool)}) if event_col in table \
        else table.assign(**{event_col: False})
    # a small training fold (a few patients) gets fewer, larger inner folds: stratification needs k members in
    # at least one class (events or censored), and k >= 2
    per_patient = rows.groupby(patient_col)[event_col].any()
    k = max(2, min(k, int(per_patient.value_counts().max()), len(per_patient)))
    inner = make_folds(rows, n_folds=k, seed=seed, patient_col=patient_col, event_col=event_col, site_col=None)
    return split(table, inner, fold=0, patient_col=patient_col)


def repeat_seed(seed: int, repeat: int) -> int:
    """The fold seed of repeat ``repeat`` of repeated CV: ``seed`` itself for repeat 0 (the single-CV folds)."""
    return int(seed) + 7919 * int(repeat)


def load_or_make_repeated_folds(store, labels: pd.DataFrame, n_folds: int = 5, seed: int = 0, repeats: int = 1,
                                **kwargs) -> list[tuple[pd.DataFrame, str]]:
    """``repeats`` x :func:`load_or_make_folds`, repeat ``r`` seeded by :func:`repeat_seed`; ``[(folds, version)]``.

    Train, tune and the signature fan-out all call this with the config's
    ``folds`` (``n_folds``, ``seed``, ``repeats``), so for the same seed they
    score on identical saved folds; repeat 0 is the plain ``n_folds`` CV.
    """
    if repeats < 1:
        raise DataError(f"folds.repeats must be >= 1, got {repeats}")
    return [load_or_make_folds(store, labels, n_folds, repeat_seed(seed, r), **kwargs) for r in range(repeats)]
