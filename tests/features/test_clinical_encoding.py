"""Clinical encoding and labels on the synthetic clinical table.

(Named test_clinical_encoding.py: tests/synth/test_clinical.py already holds
the basename test_clinical, and the test folders are not packages.)
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from tables_testdata import patients_by_id, write_tables_cohort

from mmray.cohort import LabelsSpec
from mmray.errors import CohortError
from mmray.features.clinical import ClinicalConfig, drop_not_collected, encode_clinical
from mmray.features.labels import build_labels
from mmray.features.table_io import read_text_table
from mmray.store.keys import UNDATED

SPEC = LabelsSpec(time_days="overall_survival_days", event="vital_status", event_value="Dead",
                  subtype="histology", index_date="date_of_diagnosis")
EXCLUDE = {"case_submitter_id": "id", "overall_survival_days": "label", "vital_status": "label",
           "histology": "label", "date_of_diagnosis": "label"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("clin")
    truth = write_tables_cohort(out, patients=40, seed=2, corrupt=4)
    return out, truth


def _table(out, text=None):
    if text is not None:
        (out / "edited.csv").write_text(text)
        return read_text_table(str(out / "edited.csv"), what="clinical")
    return read_text_table(str(out / "clinical.csv"), what="clinical")


def test_encoding_one_hot_missing_indicators_and_no_label_or_leak(cohort):
    out, truth = cohort
    table = _table(out)
    enc = encode_clinical(table, cfg=ClinicalConfig(), exclude=EXCLUDE)
    f, raw = enc.features, table.frame
    cols = set(f.columns)
    for banned in ("overall_survival_days", "vital_status", "histology", "cause_of_death", "followup_status_code",
                   "date_of_death", "date_of_last_contact", "date_of_diagnosis", "case_submitter_id"):
        assert not any(c == banned or c.startswith(banned + "=") or c.startswith(banned + "__") for c in cols), banned
    assert enc.kinds["date_of_diagnosis"] == "label" and enc.kinds["cause_of_death"].startswith("leaking")
    # one-hot: each present gender row has exactly one 1; levels are the values seen
    assert enc.levels["gender"] == sorted(raw["gender"].unique())
    assert (f[["gender=female", "gender=male"]].sum(axis=1) == 1).all()
    # 'Not Collected' / 'not reported' / empty -> NaN plus a __missing indicator
    weight_missing = raw["weight_lbs"].isin(["Not Collected", ""]).to_numpy()
    assert weight_missing.any()
    assert f["weight_lbs"].isna().to_numpy().tolist() == weight_missing.tolist()
    assert f["weight_lbs__missing"].to_numpy().tolist() == weight_missing.astype(float).tolist()
    present = ~weight_missing
    np.testing.assert_allclose(f.loc[present, "weight_lbs"], raw.loc[present, "weight_lbs"].astype(float))
    race_missing = raw["race"].isin(["not reported", ""]).to_numpy()
    race_cols = [c for c in cols if c.startswith("race=")]
    assert f.loc[race_missing, race_cols].isna().all().all()
    assert (f.loc[~race_missing, race_cols].sum(axis=1) == 1).all()
    assert "race=not reported" not in cols
    assert f.dtypes.eq(np.float32).all()
    assert "age_at_diagnosis_years__missing" not in cols  # no missing ages: no constant indicator


def test_config_drop_rows_ordinal_categorical_dates(cohort):
    out, _ = cohort
    table = _table(out)
    cfg = ClinicalConfig(drop_not_collected_in=("pack_years",), categorical_columns=("tissue_source_site",),
                         ordinal_columns={"histopathological_grade": ("G1", "G2", "G3")}, drop_dates=False,
                         leaking_columns=())
    keep, notes = drop_not_collected(table, cfg)
    assert keep.tolist() == (table.frame["pack_years"] != "Not Collected").tolist() and not keep.all()
    assert "pack_years" in notes[0]
    enc = encode_clinical(table, cfg=cfg, exclude=EXCLUDE)
    f, raw = enc.features, table.frame
    sites = sorted(raw["tissue_source_site"].unique())
    assert [c for c in f.columns if c.startswith("tissue_source_site=")] == [f"tissue_source_site={s}" for s in sites]
    grade = f["histopathological_grade"]
    want = raw["histopathological_grade"].map({"G1": 0.0, "G2": 1.0, "G3": 2.0})  # GX and empty -> NaN
    np.testing.assert_array_equal(grade.to_numpy(), want.to_numpy(dtype=np.float32))
    assert any("GX" in n for n in enc.notes)
    # dates kept as days since 1970 when drop_dates is off; leaking list emptied -> cause_of_death is a feature
    assert "date_of_last_contact" in f.columns and "cause_of_death=Lung cancer" in f.columns
    day = (pd.Timestamp(raw["date_of_last_contact"][0]) - pd.Timestamp("1970-01-01")).days
    assert f["date_of_last_contact"][0] == day


def test_non_numeric_cell_in_numeric_column_is_named(cohort):
    out, _ = cohort
    lines = (out / "clinical.csv").read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[3].split(",")
    cells[header.index("age_at_diagnosis_years")] = "sixty"
    lines[3] = ",".join(cells)
    table = _table(out, "\n".join(lines) + "\n")
    enc = encode_clinical(table, cfg=ClinicalConfig(), exclude=EXCLUDE)
    assert [(x["file"], x["line"], x["column"], x["value"]) for x in enc.failures] == [
        ("edited.csv", 4, "age_at_diagnosis_years", "sixty")]
    assert np.isnan(enc.features["age_at_diagnosis_years"][2])
    assert enc.features["age_at_diagnosis_years__missing"][2] == 1


def test_labels_match_truth_and_bad_row_is_named(cohort):
    out, truth = cohort
    table = _table(out)
    labels = build_labels(table, spec=SPEC, missing_values=ClinicalConfig().missing_values)
    ids = table.frame["case_submitter_id"]
    bad = truth["clinical"]["corrupt_rows"]
    assert len(bad) == 1
    assert [(f["file"], f["line"], f["column"], f["value"]) for f in labels.failures] == [
        (b["file"], b["line"], b["column"], b["value"]) for b in bad]
    truths = patients_by_id(truth)
    lab = labels.frame
    assert len(lab) == len(ids) - len(bad)
    assert labels.subtype_mapping == {"Adenocarcinoma": 0, "Large cell carcinoma": 1, "Squamous cell carcinoma": 2}
    names = truth["clinical"]["subtype_mapping"]
    for i, row in lab.iterrows():
        p = truths[ids[i]]
        assert row["time_days"] == int(p["time_days"]) and row["event"] == int(p["event"])
        assert row["subtype"] == names[p["subtype"]] and row["subtype_code"] == labels.subtype_mapping[row["subtype"]]
        assert row["event_time"] == pd.Timestamp(p["index_date"], tz="UTC")
    assert lab["event"].dtype == np.int8 and str(lab["subtype_code"].dtype) == "Int64"


def test_labels_without_index_date_are_undated_and_subtype_order_configurable(cohort):
    out, _ = cohort
    spec = dataclasses.replace(SPEC, index_date=None)
    classes = ("Squamous cell carcinoma", "Adenocarcinoma")
    labels = build_labels(_table(out), spec=spec, missing_values=(), subtype_classes=classes)
    assert (labels.frame["event_time"] == UNDATED).all()
    assert labels.subtype_mapping == {"Squamous cell carcinoma": 0, "Adenocarcinoma": 1}
    large = labels.frame["subtype"].isna()
    assert large.any() and labels.frame.loc[large, "subtype_code"].isna().all()
    assert any("subtype_classes" in n for n in labels.notes)


def _edit(out, column, fn):
    df = pd.read_csv(out / "clinical.csv", dtype=str, keep_default_na=False)
    df[column] = fn(df[column])
    return df.to_csv(index=False, lineterminator="\n")


def test_event_value_matching_nothing_is_a_clear_error(cohort):
    out, _ = cohort
    spec = dataclasses.replace(SPEC, event_value="DECEASED")
    with pytest.raises(CohortError) as err:
        build_labels(_table(out), spec=spec, missing_values=())
    msg = str(err.value)
    assert "clinical.csv" in msg and "'vital_status'" in msg and "'DECEASED'" in msg and "'Dead'" in msg


def test_event_with_three_values_names_rows(cohort):
    out, _ = cohort
    text = _edit(out, "vital_status", lambda s: s.where(s.index != 6, "Lost"))
    with pytest.raises(CohortError, match=r"vital_status.*3 different values.*lines \[8\]"):
        build_labels(_table(out, text), spec=SPEC, missing_values=())


def test_negative_and_missing_times_drop_the_label_row_only(cohort):
    out, _ = cohort
    text = _edit(out, "overall_survival_days", lambda s: s.where(s.index != 0, "-5").where(s.index != 1, ""))
    labels = build_labels(_table(out, text), spec=SPEC, missing_values=ClinicalConfig().missing_values)
    by_line = {f["line"]: f for f in labels.failures}
    assert "negative survival time -5" in by_line[2]["reason"] and by_line[2]["column"] == "overall_survival_days"
    assert "missing" in by_line[3]["reason"]
    assert 0 not in labels.frame.index and 1 not in labels.frame.index


def test_parquet_clinical_failures_name_the_row(tmp_path):
    from mmray.features.table_io import read_any_table

    pd.DataFrame({"case": ["A", "B", "C"], "age": ["61", "unknown", "47"], "sex": ["f", None, "m"]}).to_parquet(
        tmp_path / "clinical.parquet", index=False)
    table = read_any_table(str(tmp_path / "clinical.parquet"), what="clinical")
    enc = encode_clinical(table, cfg=ClinicalConfig(), exclude={"case": "id"})
    assert [(f["item"], f["row"], f["column"], f["value"]) for f in enc.failures] == [
        ("clinical.parquet:2", 2, "age", "unknown")]
    assert "clinical.parquet row 2" in enc.failures[0]["reason"]
    assert enc.features["sex__missing"].tolist() == [0.0, 1.0, 0.0]
