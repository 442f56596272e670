"""Synthetic clinical table in the style of TCIA NSCLC Radiogenomics / GDC clinical.

Labels come straight from the hidden truth (``vital_status``,
``overall_survival_days``, ``histology``); the rest is what real exports look
like: 'Not Collected' and empty cells, coded follow-up fields, and columns
that *leak* the outcome (``cause_of_death``, ``followup_status_code``,
``date_of_death``, ``date_of_last_contact``) so leakage checks have something
to find.
"""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import numpy as np

from mmray.synth.latent import Patient

NOT_COLLECTED = "Not Collected"
SUBTYPE_LABELS = {"adenocarcinoma": "Adenocarcinoma", "squamous_cell": "Squamous cell carcinoma",
                  "large_cell": "Large cell carcinoma"}
# Latent stage -> (AJCC substage, [(T, N, M), ...]) consistent with AJCC 7th edition.
STAGE_TNM = {
    "I": [("Stage IA", ("T1a", "N0", "M0")), ("Stage IA", ("T1b", "N0", "M0")), ("Stage IB", ("T2a", "N0", "M0"))],
    "II": [("Stage IIA", ("T2b", "N0", "M0")), ("Stage IIA", ("T1b", "N1", "M0")),
           ("Stage IIB", ("T2a", "N1", "M0")), ("Stage IIB", ("T3", "N0", "M0"))],
    "III": [("Stage IIIA", ("T3", "N1", "M0")), ("Stage IIIA", ("T2a", "N2", "M0")),
            ("Stage IIIB", ("T4", "N2", "M0")), ("Stage IIIB", ("T2b", "N3", "M0"))],
    "IV": [("Stage IV", ("T2a", "N2", "M1a")), ("Stage IV", ("T3", "N1", "M1b")), ("Stage IV", ("T4", "N3", "M1b"))],
}
COLUMNS = ("case_submitter_id", "tissue_source_site", "age_at_diagnosis_years", "gender", "race", "ethnicity",
           "weight_lbs", "smoking_status", "pack_years", "histology", "histopathological_grade",
           "pathologic_t", "pathologic_n", "pathologic_m", "ajcc_pathologic_stage", "egfr_status",
           "kras_status", "date_of_diagnosis", "date_of_last_contact", "date_of_death",
           "vital_status", "overall_survival_days", "cause_of_death", "followup_status_code")
LEAKING = ("cause_of_death", "followup_status_code", "date_of_death", "date_of_last_contact")
# Columns that get random empty cells; never ids, labels, dates or leaks.
MAYBE_EMPTY = ("race", "ethnicity", "weight_lbs", "histopathological_grade", "pathologic_n", "egfr_status")
P_EMPTY = 0.06


def _iso(d: dt.date) -> str:
    return d.isoformat()


def _row(p: Patient, rng: np.random.Generator) -> dict[str, str]:
    substage, (t, n, m) = STAGE_TNM[p.stage][int(rng.integers(len(STAGE_TNM[p.stage])))]
    if p.smoking == "Never":
        pack_years = "0" if rng.random() < 0.7 else NOT_COLLECTED
    elif rng.random() < 0.2:
        pack_years = NOT_COLLECTED
    else:
        pack_years = f"{float(np.clip(rng.lognormal(np.log(40), 0.45), 2, 150)):.1f}"
    weight = NOT_COLLECTED if rng.random() < 0.12 else str(int(np.clip(rng.normal(172, 36), 90, 330)))
    race = str(rng.choice(["white", "black or african american", "asian", "not reported"],
                          p=[0.72, 0.12, 0.08, 0.08]))
    ethnicity = str(rng.choice(["not hispanic or latino", "hispanic or latino", "not reported"], p=[0.85, 0.05, 0.1]))
    grade = str(rng.choice(["G1", "G2", "G3", "GX"], p=[0.15, 0.4, 0.35, 0.1]))
    last_contact = p.diagnosis_date + dt.timedelta(days=int(p.time_days))
    if p.event:
        cause = str(rng.choice(["Lung cancer", "Cardiovascular disease", "Other", "Unknown"], p=[0.7, 0.1, 0.1, 0.1]))
        code = "DOD" if cause == "Lung cancer" else "DOC"  # dead of disease / of other causes
    else:
        cause, code = "", str(rng.choice(["AWD", "NED"]))  # alive with disease / no evidence of disease

    def status(gene: str) -> str:
        # Clinical testing is partial: unknown without sequencing, and sometimes even with it.
        if not p.has_mutations or rng.random() < 0.1:
            return "Unknown"
        return "Mutant" if p.mutations.get(gene, False) else "Wildtype"

    return {
        "case_submitter_id": p.patient_id, "tissue_source_site": p.site,
        "age_at_diagnosis_years": f"{p.age_years:.1f}", "gender": p.sex.lower(), "race": race,
        "ethnicity": ethnicity, "weight_lbs": weight, "smoking_status": p.smoking, "pack_years": pack_years,
        "histology": SUBTYPE_LABELS[p.subtype], "histopathological_grade": grade,
        "pathologic_t": t, "pathologic_n": n, "pathologic_m": m, "ajcc_pathologic_stage": substage,
        "egfr_status": status("EGFR"), "kras_status": status("KRAS"),
        "date_of_diagnosis": _iso(p.index_date),
        "date_of_last_contact": _iso(last_contact), "date_of_death": _iso(last_contact) if p.event else "",
        "vital_status": "Dead" if p.event else "Alive", "overall_survival_days": str(int(p.time_days)),
        "cause_of_death": cause, "followup_status_code": code,
    }


def write_clinical(patients: list[Patient], *, out_dir: Path, seed: int) -> dict:
    """Write ``out_dir/clinical.csv``, one row per patient; return what the file holds.

    Patients with the ``malformed_table_row`` corruption get
    ``overall_survival_days = "unknown"``; each such row is listed in
    ``corrupt_rows`` with its 1-based line number (the header is line 1).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 5])
    rows = [_row(p, rng) for p in patients]
    for row in rows:
        for col in MAYBE_EMPTY:
            if rng.random() < P_EMPTY:
                row[col] = ""
    corrupt: list[dict] = []
    for i, (p, row) in enumerate(zip(patients, rows)):
        if "malformed_table_row" in p.corruptions:
            row["overall_survival_days"] = "unknown"
            corrupt.append({"file": "clinical.csv", "line": i + 2, "patient_id": p.patient_id,
                            "column": "overall_survival_days", "value": "unknown",
                            "problem": "non-numeric overall_survival_days (label) in this row"})
    path = out_dir / "clinical.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    not_collected = sorted({c for row in rows for c, v in row.items() if v == NOT_COLLECTED})
    return {
        "file": path.name,
        "id_column": "case_submitter_id",
        "labels": {"time_days": "overall_survival_days", "event": "vital_status", "event_value": "Dead",
                   "subtype": "histology", "index_date": "date_of_diagnosis"},
        "subtype_mapping": dict(SUBTYPE_LABELS),
        "stage_column": "ajcc_pathologic_stage",
        "columns": list(COLUMNS),
        "leaking_columns": list(LEAKING),
        "not_collected_columns": not_collected,
        "date_columns": ["date_of_diagnosis", "date_of_last_contact", "date_of_death"],
        "sensitive_attributes": ["gender", "race", "ethnicity", "age_at_diagnosis_years"],
        "missing_value_columns": list(MAYBE_EMPTY),
        "corrupt_rows": corrupt,
    }
