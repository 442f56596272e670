"""Inputs of the signature fan-out from the feature store: labels, expression, shared folds.

Folds come from :func:`mmray.train.folds.load_or_make_folds`: made once per
labels version (survival labels only: ``time_days > 0`` and an event value)
and saved as the store's ``folds`` group, then reused by every later run with
the same labels version, fold count and seed, so signature models and the
fusion models of ``mmray train`` are scored on the same splits.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mmray.errors import DataError, StoreError
from mmray.store import FeatureStore, training_table
from mmray.store.join import SEP
from mmray.train.folds import FOLDS_GROUP, load_or_make_repeated_folds


@dataclass
class SignatureData:
    """Patients with labels and expression: ``x`` [n, G] (columns ``genes``), labels, folds."""

    patient_id: np.ndarray  # [n]
    genes: list[str]  # [G]
    x: np.ndarray  # [n, G] float64
    time_days: np.ndarray  # [n]
    event: np.ndarray  # [n] bool
    fold: np.ndarray  # [n] int
    feature_versions: dict[str, str]  # group -> version (labels, expression)
    folds_ref: str  # "folds@v0001"
    folds_hash: str
    n_dropped: int  # labelled patients without expression (or usable labels)
    repeat_fold: np.ndarray | None = None  # [R, n] fold of each patient in each CV repeat (row 0 = ``fold``)

    def columns(self, genes) -> np.ndarray:
        index = {g: i for i, g in enumerate(self.genes)}
        return np.asarray([index[g] for g in genes], dtype=int)


def _usable_labels(labels: pd.DataFrame, *, group: str) -> pd.DataFrame:
    need = ["patient_id", "event_time", "time_days", "event"]
    missing = [c for c in need if c not in labels.columns]
    if missing:
        raise StoreError(f"group {group!r} lacks column(s) {missing}; survival labels need "
                         f"{need} (ingest the clinical table with labels.time_days and labels.event)")
    ok = labels["time_days"].notna() & labels["event"].notna() & (labels["time_days"] > 0)
    return labels.loc[ok].reset_index(drop=True)


def folds_hash(folds: pd.DataFrame) -> str:
    pairs = sorted(zip(folds["patient_id"].astype(str), folds["fold"].astype(int)))
    return hashlib.sha256("\n".join(f"{p}:{f}" for p, f in pairs).encode()).hexdigest()[:16]


def load_signature_data(store: FeatureStore, *, labels_group: str = "labels",
                        expression_group: str = "expression", n_folds: int = 5,
                        seed: int = 0, repeats: int = 1) -> SignatureData:
    """Join labels with expression (point in time), attach the shared folds (of every CV repeat)."""
    labels_version = store.latest(labels_group)
    expr_version = store.latest(expression_group)
    for group, version in ((labels_group, labels_version), (expression_group, expr_version)):
        if version is None:
            raise StoreError(f"no {group!r} group in {store.uri}; run `mmray ingest --modalities "
                             f"clinical,expression` first (groups: {store.groups() or 'none'})")
    labels = _usable_labels(store.read_table(labels_group, version=labels_version), group=labels_group)
    if labels.empty:
        raise DataError(f"group {labels_group}@{labels_version} has no row with time_days > 0 and an event value")
    repeated = load_or_make_repeated_folds(store, labels, n_folds, seed, repeats, labels_group=labels_group,
                                           labels_version=labels_version)
    folds, folds_version = repeated[0]
    table = training_table(store, labels, groups={expression_group: expr_version})
    table = table[table[f"has_{expression_group}"].to_numpy(dtype=bool)]
    prefix = f"{expression_group}{SEP}"
    genes = [c[len(prefix):] for c in table.columns
             if c.startswith(prefix) and c != f"{prefix}event_time"]
    fold_of = folds.set_index("patient_id")["fold"]
    fold = table["patient_id"].map(fold_of)
    table, fold = table[fold.notna()], fold[fold.notna()]
    if len(table) < n_folds:
        raise DataError(f"only {len(table)} patients have both labels and expression; need at least "
                        f"{n_folds} for {n_folds} folds")
    x = table[[prefix + g for g in genes]].to_numpy(dtype=float)
    ids = table["patient_id"].astype(str)
    repeat_fold = np.vstack([ids.map(f.assign(patient_id=f["patient_id"].astype(str)).set_index("patient_id")["fold"])
                             .to_numpy(dtype=int) for f, _ in repeated])
    ref = f"{FOLDS_GROUP}@{folds_version}" if repeats == 1 else \
        f"{FOLDS_GROUP}@" + ",".join(v for _, v in repeated)
    fhash = folds_hash(folds) if repeats == 1 else \
        hashlib.sha256("".join(folds_hash(f) for f, _ in repeated).encode()).hexdigest()[:16]
    return SignatureData(patient_id=table["patient_id"].to_numpy(), genes=genes, x=x,
                         time_days=table["time_days"].to_numpy(dtype=float),
                         event=table["event"].to_numpy().astype(bool), fold=fold.to_numpy(dtype=int),
                         feature_versions={labels_group: labels_version, expression_group: expr_version},
                         folds_ref=ref, folds_hash=fhash, n_dropped=int(len(labels) - len(table)),
                         repeat_fold=repeat_fold)
