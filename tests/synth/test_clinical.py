"""Synthetic clinical CSV: columns, labels, leaks, dates, missing values, corrupt rows, determinism."""

from __future__ import annotations

import datetime as dt
import re

import pandas as pd
import pytest

from mmray.synth.clinical import COLUMNS, write_clinical
from mmray.synth.latent import sample_patients
from mmray.synth.profiles import get_profile

TINY = get_profile("tiny")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """120 patients; patients 5 and 9 carry the malformed_table_row corruption."""
    patients = sample_patients(120, profile=TINY, seed=7)
    for i in (5, 9):
        patients[i].corruptions.append("malformed_table_row")
    out = tmp_path_factory.mktemp("clinical")
    meta = write_clinical(patients, out_dir=out, seed=7)
    # As text, so 'Not Collected' and empty cells stay what they are.
    table = pd.read_csv(out / meta["file"], dtype=str, keep_default_na=False)
    return patients, meta, table, out


def good_rows(patients, table):
    """(patient, row) pairs, leaving out the rows broken on purpose."""
    return [(p, row) for p, (_, row) in zip(patients, table.iterrows()) if "malformed_table_row" not in p.corruptions]


def test_columns_ids_and_label_spec(cohort):
    patients, meta, table, _ = cohort
    assert list(table.columns) == list(COLUMNS) == meta["columns"]
    assert meta["id_column"] == "case_submitter_id"
    assert list(table["case_submitter_id"]) == [p.patient_id for p in patients]
    labels = meta["labels"]
    assert labels == {"time_days": "overall_survival_days", "event": "vital_status", "event_value": "Dead",
                      "subtype": "histology", "index_date": "date_of_diagnosis"}
    named = [v for k, v in labels.items() if k != "event_value"]
    for col in [*named, *meta["leaking_columns"], *meta["date_columns"], *meta["sensitive_attributes"]]:
        assert col in table.columns, col
    assert meta["sensitive_attributes"][0] == "gender" and set(table["gender"]) == {"male", "female"}


def test_labels_match_truth(cohort):
    patients, meta, table, _ = cohort
    for p, row in good_rows(patients, table):
        assert row["vital_status"] == ("Dead" if p.event else "Alive")
        assert int(row["overall_survival_days"]) == p.time_days
        assert row["histology"] == meta["subtype_mapping"][p.subtype]
        assert re.fullmatch(r"Stage (I|II|III|IV)[AB]?", row["ajcc_pathologic_stage"])
        assert row["ajcc_pathologic_stage"].removeprefix("Stage ").rstrip("AB") == p.stage
        assert row["pathologic_m"].startswith("M1") == (p.stage == "IV")
    assert set(table["histology"]) == {"Adenocarcinoma", "Squamous cell carcinoma", "Large cell carcinoma"}


def test_leaking_columns_give_the_event_away(cohort):
    patients, meta, table, _ = cohort
    dead = table["vital_status"] == "Dead"
    assert 0 < dead.sum() < len(table)
    assert {"cause_of_death", "followup_status_code"} <= set(meta["leaking_columns"])
    assert ((table["cause_of_death"] != "") == dead).all()
    assert (table["followup_status_code"].str.startswith("D") == dead).all()
    assert ((table["date_of_death"] != "") == dead).all()


def test_dates_are_consistent(cohort):
    patients, meta, table, _ = cohort
    dates = {c: pd.to_datetime(table[c].replace("", None)) for c in meta["date_columns"]}
    # The prediction time is the diagnosis date; survival counts from it.
    assert list(dates["date_of_diagnosis"].dt.date) == [p.index_date for p in patients]
    follow = (dates["date_of_last_contact"] - dates["date_of_diagnosis"]).dt.days
    assert list(follow) == [p.time_days for p in patients]
    dead = table["vital_status"] == "Dead"
    assert (dates["date_of_death"][dead] == dates["date_of_last_contact"][dead]).all()
    assert dates["date_of_death"][~dead].isna().all()
    assert all(isinstance(d, dt.date) for d in dates["date_of_diagnosis"].dt.date)


def test_not_collected_and_missing_values(cohort):
    patients, meta, table, _ = cohort
    assert {"weight_lbs", "pack_years"} <= set(meta["not_collected_columns"])
    for col in meta["not_collected_columns"]:
        assert (table[col] == "Not Collected").any()
    never = table["smoking_status"] == "Never"
    assert set(table.loc[never, "pack_years"]) <= {"0", "Not Collected", ""} and never.any()
    smokers = table.loc[~never & ~table["pack_years"].isin(["Not Collected", ""]), "pack_years"].astype(float)
    assert (smokers > 0).all() and len(smokers) > 50
    empty = table == ""
    assert empty[meta["missing_value_columns"]].to_numpy().sum() > 10, "random empty cells exist"
    never_empty = ["case_submitter_id", "vital_status", "overall_survival_days", "histology", "date_of_diagnosis",
                   "date_of_diagnosis", "date_of_last_contact", "followup_status_code", "gender"]
    assert not empty[never_empty].to_numpy().any()


def test_mutation_status_agrees_with_truth_where_known(cohort):
    patients, _, table, _ = cohort
    for p, row in zip(patients, table.to_dict("records")):
        for gene, col in (("EGFR", "egfr_status"), ("KRAS", "kras_status")):
            if row[col] in ("Mutant", "Wildtype"):
                assert p.has_mutations and (row[col] == "Mutant") == p.mutations[gene]
            elif not p.has_mutations:
                assert row[col] in ("Unknown", "")
    assert (table["egfr_status"] == "Mutant").any() and (table["kras_status"] == "Unknown").any()


def test_malformed_rows_are_documented(cohort):
    patients, meta, table, out = cohort
    broken = {patients[5].patient_id, patients[9].patient_id}
    assert {r["patient_id"] for r in meta["corrupt_rows"]} == broken
    lines = (out / "clinical.csv").read_text().splitlines()
    header = lines[0].split(",")
    for row in meta["corrupt_rows"]:
        cells = dict(zip(header, lines[row["line"] - 1].split(",")))
        assert cells["case_submitter_id"] == row["patient_id"] and row["file"] == "clinical.csv"
        assert cells[row["column"]] == row["value"] == "unknown"
    days = pd.to_numeric(table["overall_survival_days"], errors="coerce")
    assert set(table.loc[days.isna(), "case_submitter_id"]) == broken


def test_same_seed_same_bytes(cohort, tmp_path):
    patients, _, _, out = cohort
    write_clinical(patients, out_dir=tmp_path / "a", seed=7)
    write_clinical(patients, out_dir=tmp_path / "b", seed=8)
    assert (tmp_path / "a" / "clinical.csv").read_bytes() == (out / "clinical.csv").read_bytes()
    assert (tmp_path / "b" / "clinical.csv").read_bytes() != (out / "clinical.csv").read_bytes()
