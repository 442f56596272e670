"""Label-free omics transforms applied once at ingest (per-sample, no fitting).

* duplicate genes: ``sum`` (default; right for counts and TPM, where several
  ids of one symbol are parts of one gene's expression) or ``max_variance``
  (keep the duplicate with the largest variance across samples, the usual
  choice for microarray probes and for already-logged values); a gene
  missing in every duplicate stays missing;
* ``log2(x + 1)``: ``auto`` applies it when the values look linear (all >= 0
  and the largest > 50), ``always``, or ``never``;
* samples -> patients: one sample per patient (see
  :mod:`mmray.features.barcodes`).

Anything fitted to data (per-gene scaling, variance or label-based selection)
is a fold-fitted transform in :mod:`mmray.features.selection`, never here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mmray.errors import CohortError
from mmray.features.barcodes import SampleAssignment, assign_samples

DUPLICATE_POLICIES = ("sum", "max_variance")
LOG2_MODES = ("auto", "always", "never")
LINEAR_MAX = 50.0


def collapse_duplicate_genes(values: pd.DataFrame, *, how: str = "sum") -> tuple[pd.DataFrame, int]:
    """Samples x genes with each gene once; returns ``(values, number of duplicated genes)``."""
    if how not in DUPLICATE_POLICIES:
        raise CohortError(f"tables.expression.duplicate_genes must be one of {DUPLICATE_POLICIES}, got {how!r}")
    dup = values.columns.duplicated(keep=False)
    if not dup.any():
        return values, 0
    n_genes = int(pd.Index(values.columns[dup]).nunique())
    if how == "sum":
        summed = values.T.groupby(level=0, sort=False).sum(min_count=1).T
        return summed[list(dict.fromkeys(values.columns))], n_genes
    variance = values.var(axis=0, skipna=True).to_numpy()
    variance = np.where(np.isnan(variance), -np.inf, variance)
    order = pd.DataFrame({"gene": values.columns, "var": variance, "pos": np.arange(values.shape[1])})
    best = order.sort_values(["gene", "var", "pos"], ascending=[True, False, True]).drop_duplicates("gene")
    keep = np.sort(best["pos"].to_numpy())
    return values.iloc[:, keep], n_genes


def log2p1(values: pd.DataFrame, *, mode: str = "auto") -> tuple[pd.DataFrame, bool]:
    """``(values, applied)``; negative values with log applied are an error naming how many."""
    if mode not in LOG2_MODES:
        raise CohortError(f"tables.expression.log2 must be one of {LOG2_MODES}, got {mode!r}")
    arr = values.to_numpy(dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 0.0
    apply = mode == "always" or (mode == "auto" and lo >= 0 and hi > LINEAR_MAX)
    if not apply:
        return values, False
    if lo < 0:
        n = int((finite < 0).sum())
        raise CohortError(f"expression has {n} negative value(s) (min {lo:g}), so log2(x+1) is undefined; "
                          f"the matrix looks log-scaled already: set tables.expression.log2: never")
    return pd.DataFrame(np.log2(arr + 1.0), index=values.index, columns=values.columns), True


def to_patients(values: pd.DataFrame, *, tumour_only: bool = False) -> tuple[pd.DataFrame, SampleAssignment]:
    """Samples x features -> patients x features (index ``patient_id``, raw ids), one sample each."""
    first = ~values.index.duplicated(keep="first")
    values = values[first]
    assignment = assign_samples(values.index, tumour_only=tumour_only)
    chosen = values.loc[list(assignment.chosen)]
    chosen.index = pd.Index([assignment.chosen[s] for s in chosen.index], name="patient_id")
    return chosen, assignment
