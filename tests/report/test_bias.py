"""Bias report: every number equals a hand computation."""

from __future__ import annotations

import base64
from pathlib import Path

import pandas as pd
import pytest

from mmray.report.bias import BiasConfig, age_groups, bias_html, bias_report
from mmray.report.render import write_report
from mmray.store import FeatureStore

# 10 patients; by hand below.
RAW = pd.DataFrame({
    "gender": ["female", "female", "female", "female", "male", "male", "male", "male", "male", "male"],
    "race": ["white", "white", "asian", "not reported", "white", "white", "white", "asian", "", "white"],
    "age_at_diagnosis_years": ["45", "55.5", "61", "70", "72", "80", "49.9", "Not Collected", "65", "59"],
})
LABELS = pd.DataFrame({
    "event": [1, 0, 1, 0, 1, 1, 1, 0, 0, 1],
    "subtype": ["LUAD", "LUSC", "LUAD", None, "LUSC", "LUSC", "LUAD", "LUAD", "LUSC", "LUSC"],
})
MISSING = ("Not Collected", "not reported")


@pytest.fixture(scope="module")
def report():
    return bias_report(RAW, labels=LABELS, missing_values=MISSING, subtype_mapping={"LUAD": 0, "LUSC": 1})


def _facet(report, attribute, facet):
    attr = next(a for a in report["attributes"] if a["attribute"] == attribute)
    return next(f for f in attr["facets"] if f["facet"] == facet)


def test_gender_by_hand(report):
    f = _facet(report, "gender", "female")
    # female: 4 patients, events 1,0,1,0 -> 2/4; rest (male): 6, events 1,1,1,0,0,1 -> 4/6
    assert (f["n"], f["share"]) == (4, 0.4)
    assert f["class_imbalance"] == pytest.approx((4 - 6) / 10)
    ev = f["labels"]["event"]
    assert (ev["n"], ev["positives"]) == (4, 2)
    assert ev["rate"] == pytest.approx(0.5) and ev["rate_rest"] == pytest.approx(4 / 6)
    assert ev["dpl"] == pytest.approx(0.5 - 4 / 6)
    # subtype LUAD among known subtypes: female known 3 (LUAD, LUSC, LUAD) -> 2/3; male 6 known -> LUAD 2/6
    luad = f["labels"]["subtype=LUAD"]
    assert (luad["n"], luad["positives"]) == (3, 2)
    assert luad["dpl"] == pytest.approx(2 / 3 - 2 / 6)
    m = _facet(report, "gender", "male")
    assert m["labels"]["event"]["dpl"] == pytest.approx(4 / 6 - 0.5)
    assert m["labels"]["subtype=LUSC"]["rate"] == pytest.approx(4 / 6)


def test_race_with_missing_facet_by_hand(report):
    white = _facet(report, "race", "white")
    # white rows 0,1,4,5,6,9: events 1,0,1,1,1,1 -> 5/6; rest rows 2,3,7,8: 1,0,0,0 -> 1/4
    assert white["n"] == 6 and white["labels"]["event"]["dpl"] == pytest.approx(5 / 6 - 1 / 4)
    missing = _facet(report, "race", "(missing)")  # 'not reported' and '' are one facet
    assert missing["n"] == 2 and missing["labels"]["event"]["rate"] == 0.0
    attr = next(a for a in report["attributes"] if a["attribute"] == "race")
    assert [f["facet"] for f in attr["facets"]] == ["white", "(missing)", "asian"]  # by size, ties by name
    assert sum(f["n"] for f in attr["facets"]) == 10


def test_age_groups_by_hand(report):
    groups = age_groups(RAW["age_at_diagnosis_years"], (50, 60, 70, 80), missing_values=MISSING).tolist()
    assert groups == ["<50", "50-59", "60-69", "70-79", "70-79", ">=80", "<50", "(missing)", "60-69", "50-59"]
    f = _facet(report, "age_group", "70-79")
    # rows 3 (event 0) and 4 (event 1) -> 1/2; rest: 8 rows with events 1,0,1,1,1,0,0,1 -> 5/8
    assert f["n"] == 2 and f["labels"]["event"]["dpl"] == pytest.approx(0.5 - 5 / 8)
    attr = next(a for a in report["attributes"] if a["attribute"] == "age_group")
    assert attr["column"] == "age_at_diagnosis_years"


def test_matches_pandas_on_every_facet(report):
    for attr in report["attributes"]:
        col = attr["column"]
        facets = (age_groups(RAW[col], (50, 60, 70, 80), missing_values=MISSING) if attr["attribute"] == "age_group"
                  else RAW[col].where(~RAW[col].isin([*MISSING, ""]), "(missing)"))
        for f in attr["facets"]:
            a = (facets == f["facet"]).to_numpy()
            assert f["n"] == a.sum()
            qa, qd = LABELS["event"][a].mean(), LABELS["event"][~a].mean()
            assert f["labels"]["event"]["dpl"] == pytest.approx(qa - qd)


def test_skips_absent_attributes_and_writes_html(report, tmp_path):
    rep = bias_report(RAW, labels=LABELS, cfg=BiasConfig(attributes=("gender", "ethnicity")))
    assert [a["attribute"] for a in rep["attributes"]] == ["gender"]
    assert "ethnicity" in rep["skipped"][0]["reason"]
    where = write_report(FeatureStore(tmp_path / "s"), "bias", report, bias_html(report))
    html = Path(where["html"]).read_text()
    assert "Bias report" in html and "DPL" in html
    png = html.split('src="data:image/png;base64,')[1].split('"')[0]
    assert base64.b64decode(png)[:4] == b"\x89PNG"
