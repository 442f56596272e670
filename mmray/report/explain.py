"""Per-patient explanation of a registered survival model: risk, curve, modality and feature contributions.

Works on any served model (:class:`~mmray.registry.pyfunc.SurvivalPyfunc`:
gene-signature Cox pipelines and tuned torch / HEEC models alike), through
the same ``predict_arrays`` the endpoint answers with, so an explanation's
risk is ``/v1/predict``'s.

Attribution is by masking (occlusion), with the model's own notion of
"absent": a modality is masked by setting its ``has_<group>`` flag to 0 and
its values to NaN (exactly what the point-in-time join writes for a patient
without that group, so the model sees what it saw in training for such a
patient); a single feature is masked by NaN (imputed by the model's fitted
preprocessing, or sent down LightGBM's missing-value branch). A
contribution is ``risk(patient) - risk(patient, masked)``: positive raises
the risk. All masked rows go through the model in one batch.

Why masking, not integrated gradients: the served estimators include
non-differentiable steps (pandas preprocessing, imputers, LightGBM), and a
patient's missing modality has no meaningful gradient path; occlusion with
the model's missing-value semantics is defined for every one of them.
For an affine model (the signature Cox pipelines) a feature's contribution
is exactly ``w_j * (x_j - imputed_j)``, which the tests check against the
fitted coefficients.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FLAG = "has_"
SEP = "__"
GENOMIC = ("expression", "mutations", "cnv", "proteins", "methylation")  # groups whose columns are genes
DEFAULT_GROUP = "expression"  # unprefixed features (the gene-signature models) are expression values


def group_of(feature: str, *, default_group: str = DEFAULT_GROUP) -> str:
    """``clinical__age`` -> ``clinical``; ``has_wsi_patient`` -> ``wsi_patient``; ``MKI67`` -> ``expression``."""
    if feature.startswith(FLAG):
        return feature[len(FLAG):]
    return feature.split(SEP, 1)[0] if SEP in feature else default_group


def column_of(feature: str) -> str:
    """The group's own column name: ``expression__MKI67`` -> ``MKI67``."""
    return feature.split(SEP, 1)[1] if SEP in feature else feature


def feature_groups(features: list[str], *, default_group: str = DEFAULT_GROUP) -> dict[str, list[int]]:
    """group -> indices of its features (its ``has_`` flag included), in first-seen order."""
    out: dict[str, list[int]] = {}
    for j, f in enumerate(features):
        out.setdefault(group_of(f, default_group=default_group), []).append(j)
    return out


@dataclass(frozen=True)
class Masks:
    """The masked copies of one patient's row and what each one masks."""

    rows: np.ndarray  # [1 + G + K, F]: the patient, one row per present modality, one per present feature
    groups: list[str]  # the G modalities masked (rows 1..G)
    features: list[int]  # the K feature indices masked (rows 1+G..)


def present_groups(x: np.ndarray, features: list[str], groups: dict[str, list[int]]) -> list[str]:
    """Modalities present in row ``x`` [F]: flag 1 where the model has the flag, else any finite value."""
    out = []
    for g, idx in groups.items():
        flag = [j for j in idx if features[j] == FLAG + g]
        if flag:
            present = bool(np.nan_to_num(x[flag[0]], nan=0.0))
        else:
            present = bool(np.isfinite(x[idx]).any())
        if present:
            out.append(g)
    return out


def masks(x: np.ndarray, features: list[str], groups: dict[str, list[int]]) -> Masks:
    """Rows for :func:`explain_row` (module doc: a modality masked = flag 0 + NaN values; a feature = NaN)."""
    present = present_groups(x, features, groups)
    value_idx = [j for j in range(len(features)) if not features[j].startswith(FLAG) and np.isfinite(x[j])]
    rows = np.repeat(x[None, :], 1 + len(present) + len(value_idx), axis=0)
    for k, g in enumerate(present, start=1):
        for j in groups[g]:
            rows[k, j] = 0.0 if features[j] == FLAG + g else np.nan
    for k, j in enumerate(value_idx, start=1 + len(present)):
        rows[k, j] = np.nan
    return Masks(rows, present, value_idx)


def _effect(feature: str, value: float, delta: float, default_group: str) -> dict:
    return {"feature": feature, "group": group_of(feature, default_group=default_group),
            "value": float(value), "contribution": float(delta),
            "direction": "raises risk" if delta > 0 else ("lowers risk" if delta < 0 else "no effect")}


def explain_row(model, x: np.ndarray, *, top_k: int = 10, default_group: str = DEFAULT_GROUP) -> dict:
    """One patient's explanation (``x`` [F] in ``model.features`` order, NaN where unknown).

    Returns ``risk``, ``survival`` ({times_days, probabilities} or None),
    ``modalities`` (present and absent, with contributions), ``top_features``
    and ``top_genes`` (|contribution| order, each with direction).
    """
    features = list(model.features)
    x = np.asarray(x, dtype=float).reshape(-1)
    groups = feature_groups(features, default_group=default_group)
    m = masks(x, features, groups)
    risk, surv = model.predict_arrays(m.rows)
    base = float(risk[0])
    g_delta = {g: base - float(risk[k]) for k, g in enumerate(m.groups, start=1)}
    f_delta = {j: base - float(risk[k]) for k, j in enumerate(m.features, start=1 + len(m.groups))}
    modalities = [{"modality": g, "present": g in g_delta, "n_features": sum(not features[j].startswith(FLAG)
                                                                              for j in idx),
                   "contribution": g_delta.get(g)} for g, idx in groups.items()]
    ranked = sorted(f_delta, key=lambda j: (-abs(f_delta[j]), features[j]))
    effects = [_effect(features[j], x[j], f_delta[j], default_group) for j in ranked]
    genes = [{**e, "gene": column_of(e["feature"])} for e in effects if e["group"] in GENOMIC]
    survival = None
    if surv is not None:
        survival = {"times_days": [float(t) for t in model.times_days],
                    "probabilities": [float(p) for p in surv[0]]}
    return {"risk": base, "survival": survival, "modalities": modalities,
            "top_features": effects[:top_k], "top_genes": genes[:top_k],
            "method": "masking: contribution = risk - risk with the modality (flag 0, values NaN) or the "
                      "feature (NaN: imputed by the model) masked; positive raises the risk"}


def explain_rows(model, x: np.ndarray, *, top_k: int = 10, default_group: str = DEFAULT_GROUP) -> list[dict]:
    """:func:`explain_row` for each row of ``x`` [n, F]."""
    x = np.asarray(x, dtype=float)
    return [explain_row(model, row, top_k=top_k, default_group=default_group) for row in x]
