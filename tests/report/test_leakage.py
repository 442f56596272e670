"""Target-leakage report: the planted leaking columns are caught, ordinary ones are not."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmray.cohort import LabelsSpec
from mmray.features.clinical import DEFAULT_MISSING, parse_dates
from mmray.features.labels import build_labels
from mmray.features.table_io import read_text_table
from mmray.report.leakage import LeakageConfig, leakage_html, leakage_report
from mmray.report.render import read_report, write_report
from mmray.store import FeatureStore
from mmray.synth.clinical import LEAKING, write_clinical
from mmray.synth.latent import sample_patients
from mmray.synth.profiles import get_profile

SPEC = LabelsSpec(time_days="overall_survival_days", event="vital_status", event_value="Dead",
                  subtype="histology", index_date="date_of_diagnosis")
LABEL_COLUMNS = {"case_submitter_id", "overall_survival_days", "vital_status", "histology", "date_of_diagnosis"}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """150 patients (the demo size): enough rows for the cross-validated scores to mean something."""
    out = tmp_path_factory.mktemp("clin")
    write_clinical(sample_patients(150, profile=get_profile("demo"), seed=3), out_dir=out, seed=3)
    table = read_text_table(str(out / "clinical.csv"), what="clinical")
    labels = build_labels(table, spec=SPEC, missing_values=DEFAULT_MISSING)
    dates = parse_dates(table.frame["date_of_diagnosis"])
    return leakage_report(table.frame, labels=labels.frame, exclude=LABEL_COLUMNS, index_dates=dates,
                          missing_values=DEFAULT_MISSING)


def _col(report, name):
    return next(c for c in report["columns"] if c["column"] == name)


def test_planted_leaking_columns_are_flagged(report):
    assert set(LEAKING) == {"cause_of_death", "followup_status_code", "date_of_death", "date_of_last_contact"}
    assert set(LEAKING) <= set(report["flagged"])
    assert _col(report, "cause_of_death")["auc_event"] > 0.95
    assert _col(report, "cause_of_death")["null_when_no_event"]
    assert _col(report, "followup_status_code")["auc_event"] > 0.95  # DOD/DOC vs AWD/NED: needs the model
    assert _col(report, "date_of_death")["null_when_no_event"]
    last = _col(report, "date_of_last_contact")
    assert last["after_index_fraction"] == 1.0 and last["c_index"] > 0.95  # days since index == survival time


def test_ordinary_columns_are_not_flagged(report):
    assert set(report["flagged"]) == set(LEAKING)
    for name in ("age_at_diagnosis_years", "ajcc_pathologic_stage", "gender", "smoking_status", "pack_years"):
        c = _col(report, name)
        assert not c["flagged"] and c["reasons"] == []
        assert c["auc_event"] < 0.8 and c["c_index"] < 0.75
    assert {c["column"] for c in report["columns"]}.isdisjoint(LABEL_COLUMNS)
    assert _col(report, "ajcc_pathologic_stage")["kind"] == "categorical"
    assert _col(report, "age_at_diagnosis_years")["kind"] == "numeric"


def test_rules_on_a_hand_made_table():
    rng = np.random.default_rng(0)
    n = 40
    event = np.array([1, 0] * (n // 2))
    raw = pd.DataFrame({
        "note": np.where(event == 1, "x", ""),  # filled exactly when the event happened
        "visit": ["2020-01-01"] * n,  # a date, never after the index date
        "noise": rng.normal(size=n).round(3).astype(str),
    })
    labels = pd.DataFrame({"event": event, "time_days": rng.uniform(100, 1000, n)})
    index = pd.Series([pd.Timestamp("2020-06-01", tz="UTC")] * n)
    rep = leakage_report(raw, labels=labels, index_dates=index, cfg=LeakageConfig(folds=4))
    assert rep["flagged"] == ["note"]
    assert _col(rep, "visit")["after_index_fraction"] == 0.0 and _col(rep, "visit")["kind"] == "date"
    small = leakage_report(raw.iloc[:10], labels=labels.iloc[:10], cfg=LeakageConfig(folds=2))
    assert not small["model_checks"] and small["flagged"] == ["note"]  # too few rows: only the rules flag


def test_report_files_in_the_store(report, tmp_path):
    store = FeatureStore(tmp_path / "store")
    where = write_report(store, "leakage", report, leakage_html(report))
    assert where["json"].endswith(".json") and Path(where["html"]).exists()
    back = read_report(store, "leakage")
    assert back["flagged"] == report["flagged"] and back["n_rows"] == 150
    assert json.loads(Path(where["json"]).read_text())["columns"] == back["columns"]
    html = Path(where["html"]).read_text()
    assert "Target leakage report" in html and "cause_of_death" in html
    png = html.split('src="data:image/png;base64,')[1].split('"')[0]
    assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"
    assert store.groups() == []  # reports are not feature groups
