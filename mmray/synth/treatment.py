"""Treatment outcomes of a synthetic cohort: best response and grade-3+ toxicities, with their hidden truth.

Each patient gets two more latent factors of its own, drawn from a random
stream separate from the survival model's (so adding them changes no other
file of a cohort): ``z_response`` (chemo-sensitivity; the ``ERCC1`` protein
shows it) and ``z_toxicity`` (drug-metabolism deficiency; ``DPYD`` and
``UGT1A1`` show it).  Outcomes mix them with factors that also drive risk:

* best response (``Complete Response`` / ``Partial Response`` / ``No Response``,
  ``[Not Evaluated]`` for ~8%) from
  ``s = W_RESP_IMMUNE*z_immune + W_RESP_CLINICAL*z_clinical + W_RESP_OWN*z_response + noise``
  cut at :data:`RESPONSE_CUTS`;
* three grade-3+ toxicities (``Yes``/``No``), each a logistic model in
  ``z_toxicity`` plus one risk factor (:data:`TOXICITY_MODEL`): neutropenia
  with age, immune-related pneumonitis with ``z_immune``, fatigue with
  ``z_clinical``.

The columns are appended to ``clinical.csv`` (labels, never features:
cohort.yaml names them under ``labels``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from mmray.synth.latent import Patient

RESPONSE_COLUMN = "best_response"
RESPONSES = ("No Response", "Partial Response", "Complete Response")
NOT_EVALUATED = "[Not Evaluated]"  # a TCGA missing-value token
P_NOT_EVALUATED = 0.08
RESPONSE_CUTS = (-0.35, 0.95)  # s below the first: no response; above the second: complete
W_RESP_IMMUNE, W_RESP_CLINICAL, W_RESP_OWN, RESP_NOISE = 0.8, -0.4, 1.0, 0.35
# toxicity column -> (intercept, weight of z_toxicity, (risk factor, weight))
TOXICITY_MODEL: dict[str, tuple[float, float, tuple[str, float]]] = {
    "grade3plus_neutropenia": (-1.4, 1.5, ("age_z", 0.6)),
    "grade3plus_pneumonitis": (-1.6, 1.1, ("z_immune", 1.0)),
    "grade3plus_fatigue": (-1.2, 1.2, ("z_clinical", 0.6)),
}
TOXICITY_VALUE = "Yes"


def plant_treatment(patients: list[Patient], *, seed: int) -> None:
    """Draw ``z_response``, ``z_toxicity``, ``response`` and ``toxicity`` for every patient (in place)."""
    rng = np.random.default_rng([seed, 7])
    for p in patients:
        p.z_response, p.z_toxicity = (float(v) for v in rng.normal(size=2))
        s = (W_RESP_IMMUNE * p.z_immune + W_RESP_CLINICAL * p.z_clinical + W_RESP_OWN * p.z_response
             + RESP_NOISE * rng.normal())
        evaluated = rng.random() >= P_NOT_EVALUATED
        p.response = RESPONSES[int(np.searchsorted(RESPONSE_CUTS, s))] if evaluated else None
        factors = {"age_z": (p.age_years - 66.0) / 9.0, "z_immune": p.z_immune, "z_clinical": p.z_clinical}
        tox = {}
        for col, (b0, w_own, (f, w)) in TOXICITY_MODEL.items():
            logit = b0 + w_own * p.z_toxicity + w * factors[f]
            tox[col] = bool(rng.random() < 1.0 / (1.0 + np.exp(-logit)))
        p.toxicity = tox


def append_treatment_columns(path: Path, patients: list[Patient], *, id_column: str) -> list[str]:
    """Add the response and toxicity columns to the clinical CSV at ``path``; returns the new columns."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        header, rows = list(reader.fieldnames or []), list(reader)
    by_id = {p.patient_id: p for p in patients}
    new = [RESPONSE_COLUMN, *TOXICITY_MODEL]
    for row in rows:
        p = by_id[row[id_column]]
        row[RESPONSE_COLUMN] = p.response or NOT_EVALUATED
        for col in TOXICITY_MODEL:
            row[col] = TOXICITY_VALUE if p.toxicity[col] else "No"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header + new, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return new


def treatment_truth() -> dict:
    """What truth.json records about the planted outcomes."""
    return {
        "response": {"column": RESPONSE_COLUMN, "classes": list(RESPONSES), "not_evaluated": NOT_EVALUATED,
                     "score": "W_IMMUNE*z_immune + W_CLINICAL*z_clinical + W_OWN*z_response + noise",
                     "weights": {"z_immune": W_RESP_IMMUNE, "z_clinical": W_RESP_CLINICAL,
                                 "z_response": W_RESP_OWN, "noise_sd": RESP_NOISE},
                     "cuts": list(RESPONSE_CUTS), "own_factor_shown_by": ["ERCC1"]},
        "toxicity": {"columns": list(TOXICITY_MODEL), "value": TOXICITY_VALUE,
                     "logistic": {c: {"intercept": b0, "z_toxicity": w_own, f: w}
                                  for c, (b0, w_own, (f, w)) in TOXICITY_MODEL.items()},
                     "own_factor_shown_by": ["DPYD", "UGT1A1"]},
    }
