"""FHIR in and out without a server: Bundles parsed to model inputs, RiskAssessments validated by fhir.resources."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from fhir.resources.R4B.riskassessment import RiskAssessment

from mmray.serve.fhir import (
    EXT_MISSING_FEATURE,
    EXT_MISSING_MODALITY,
    EXT_RISK_SCORE,
    LOINC_SYSTEM,
    bundle_for,
    operation_outcome,
    parse_bundle,
    risk_assessment,
)
from mmray.serve.schemas import ApiError

FEATURES = ["clinical__age_at_diagnosis_years", "clinical__weight_lbs", "has_clinical",
            "expression__MKI67", "expression__TOP2A", "has_expression"]
VALUES = [61.0, 150.0, 1.0, 2.5, -0.5, 1.0]


def test_a_bundle_round_trips_to_the_model_inputs():
    b = bundle_for(FEATURES, VALUES, patient_id="p1")
    codes = [e["resource"]["code"]["coding"][0] for e in b["entry"][1:]]
    assert codes[0] == {"system": LOINC_SYSTEM, "code": "30525-0", "display": "Age"}  # LOINC where one exists
    assert codes[2]["code"] == "expression__MKI67"  # the mmray code system otherwise
    got = parse_bundle(b, FEATURES)
    np.testing.assert_array_equal(got["x"][0], VALUES)
    assert got["patient"] == "Patient/p1" and got["missing_features"] == [] and got["missing_modalities"] == []
    assert got["used"] == 4 and len(got["basis"]) == 4


def test_units_are_converted_and_the_latest_observation_wins():
    b = bundle_for(FEATURES, VALUES, patient_id="p1")
    weight = b["entry"][2]["resource"]
    weight["valueQuantity"] = {"value": 68.0, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}
    weight["effectiveDateTime"] = "2024-01-02"
    older = copy.deepcopy(weight)
    older["valueQuantity"]["value"], older["effectiveDateTime"] = 99.0, "2023-01-01"
    b["entry"].append({"resource": older})
    got = parse_bundle(b, FEATURES)
    assert got["x"][0, 1] == pytest.approx(68.0 * 2.2046226218)


def test_missing_observations_are_missing_features_and_modalities():
    b = bundle_for(FEATURES, [61.0, np.nan, 1.0, np.nan, np.nan, 1.0], patient_id="p1")
    got = parse_bundle(b, FEATURES)
    assert got["missing_features"] == ["clinical__weight_lbs", "expression__MKI67", "expression__TOP2A"]
    assert got["missing_modalities"] == ["expression"]
    x = got["x"][0]
    assert x[2] == 1.0 and x[5] == 0.0 and np.isnan(x[[1, 3, 4]]).all()  # absent modality: flag 0, as joined
    ra = risk_assessment(name="m", version="3", risk=0.25, survival=np.array([0.9, 0.6]), times_days=[365, 730],
                         parsed=got)
    RiskAssessment.model_validate(ra)
    ext = {}
    for e in ra["extension"]:
        ext.setdefault(e["url"], []).append(e.get("valueString", e.get("valueDecimal")))
    assert ext[EXT_RISK_SCORE] == [0.25] and ext[EXT_MISSING_MODALITY] == ["expression"]
    assert ext[EXT_MISSING_FEATURE] == got["missing_features"] and "note" in ra
    assert [p["probabilityDecimal"] for p in ra["prediction"]] == pytest.approx([0.1, 0.4])
    assert [p["whenRange"]["high"]["value"] for p in ra["prediction"]] == [365, 730]


def _bad(mutate):
    b = bundle_for(FEATURES, VALUES, patient_id="p1")
    mutate(b)
    return b


BAD = {
    "not a Bundle": lambda b: b.update(resourceType="Patient"),
    "no Patient": lambda b: b["entry"].pop(0),
    "two Patients": lambda b: b["entry"].append({"resource": {"resourceType": "Patient", "id": "p2"}}),
    "wrong field type": lambda b: b["entry"][1]["resource"].update(status=["final"]),
    "unknown field": lambda b: b["entry"][1]["resource"].update(bogus=1),
    "no value": lambda b: b["entry"][1]["resource"].pop("valueQuantity"),
    "text value": lambda b: b["entry"][1]["resource"].pop("valueQuantity") or b["entry"][1]["resource"].update(
        valueString="sixty"),
    "unknown unit": lambda b: b["entry"][1]["resource"]["valueQuantity"].update(code="furlong"),
    "other patient's observation": lambda b: b["entry"][1]["resource"].update(subject={"reference": "Patient/zz"}),
    "no feature coded": lambda b: [e["resource"].update(code={"text": "x"}) for e in b["entry"][1:]],
    "entry not an object": lambda b: b["entry"].append(7),
}


@pytest.mark.parametrize("what", sorted(BAD))
def test_bad_bundles_are_422_with_a_message(what):
    with pytest.raises(ApiError) as e:
        parse_bundle(_bad(BAD[what]), FEATURES)
    assert e.value.status == 422 and e.value.error == "invalid_fhir" and len(e.value.message) > 20
    out = operation_outcome(e.value)
    assert out["resourceType"] == "OperationOutcome" and out["issue"][0]["diagnostics"] == e.value.message
    assert "sixty" not in e.value.message  # values are never echoed
