"""Per-patient explanations: masking contributions against a Cox pipeline's own coefficients, store rows.

The model is what the registry serves (a SurvivalPyfunc over an impute -> scale -> Cox pipeline) on
two modalities with ``has_`` flags; for such an affine model masking a feature (NaN, imputed with the
training median) must move the risk by exactly ``w_j / scale_j * (x_j - median_j)``, which is read off
the fitted sklearn steps independently of the explanation code.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.util import Surv

from mmray.registry.pyfunc import SurvivalPyfunc
from mmray.report.explain import explain_row, feature_groups, group_of
from mmray.report.explain_data import patient_rows, resolve_patients
from mmray.store import FeatureStore

FEATURES = ["clinical__age_at_diagnosis_years", "clinical__weight_lbs", "has_clinical",
            "expression__MKI67", "expression__TOP2A", "expression__ESR1", "has_expression"]


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(0)
    n = 120
    x = rng.normal(size=(n, len(FEATURES)))
    x[:, 2] = 1.0
    x[:, 6] = (rng.random(n) > 0.2).astype(float)  # a fifth lack expression: flag 0 (values NaN, imputed)
    x[x[:, 6] == 0, 3:6] = np.nan
    lin = 0.8 * np.nan_to_num(x[:, 3]) - 0.5 * x[:, 0]
    time_days = rng.exponential(1000 * np.exp(-lin)) + 1
    event = rng.random(n) < 0.7
    est = Pipeline([("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                    ("scale", StandardScaler()), ("cox", CoxPHSurvivalAnalysis(alpha=0.1, ties="breslow"))])
    est.fit(x, Surv.from_arrays(event, time_days))
    return SurvivalPyfunc(est, features=FEATURES, times_days=[365, 730])


def _weights(model):
    """``(median, w)``: imputed value and risk slope per raw feature, from the fitted sklearn steps."""
    est = model.estimator
    return est.named_steps["impute"].statistics_, est.named_steps["cox"].coef_ / est.named_steps["scale"].scale_


def test_feature_and_modality_contributions_match_the_cox_coefficients(model):
    x = np.array([62.0, 1.5, 1.0, 2.0, -0.3, 0.7, 1.0])
    e = explain_row(model, x, top_k=10)
    median, w = _weights(model)
    risk, surv = model.predict_arrays(x[None])
    assert e["risk"] == pytest.approx(float(risk[0]), abs=1e-9)
    assert e["survival"]["probabilities"] == pytest.approx(surv[0].tolist(), abs=1e-9)
    got = {f["feature"]: f["contribution"] for f in e["top_features"]}
    assert set(got) == {f for f in FEATURES if not f.startswith("has_")}  # every present value, no flags
    for j, f in enumerate(FEATURES):
        if f in got:
            assert got[f] == pytest.approx(w[j] * (x[j] - median[j]), rel=1e-6, abs=1e-9), f
    mods = {m["modality"]: m for m in e["modalities"]}
    for g, idx in feature_groups(FEATURES).items():  # masking a modality = its values imputed + flag 0
        want = sum(w[j] * (x[j] - median[j]) for j in idx if not FEATURES[j].startswith("has_"))
        want += w[idx[-1]] * (1.0 - 0.0)  # the flag goes from 1 to 0, not to its median
        assert mods[g]["present"] and mods[g]["contribution"] == pytest.approx(want, rel=1e-6)
    ranked = [abs(f["contribution"]) for f in e["top_features"]]
    assert ranked == sorted(ranked, reverse=True)
    for f in e["top_features"]:
        assert f["direction"] == ("raises risk" if f["contribution"] > 0 else "lowers risk")
    assert [g["gene"] for g in e["top_genes"]] == [f["feature"].split("__")[1] for f in e["top_features"]
                                                   if f["group"] == "expression"]


def test_an_absent_modality_is_reported_absent_and_not_masked_again(model):
    x = np.array([62.0, 1.5, 1.0, np.nan, np.nan, np.nan, 0.0])
    e = explain_row(model, x, top_k=3)
    mods = {m["modality"]: m for m in e["modalities"]}
    assert not mods["expression"]["present"] and mods["expression"]["contribution"] is None
    assert mods["clinical"]["present"] and len(e["top_features"]) == 2 and e["top_genes"] == []


def test_group_names():
    assert group_of("clinical__gender=male") == "clinical"
    assert group_of("has_wsi_patient") == "wsi_patient"
    assert group_of("MKI67") == "expression"  # the gene-signature models' features


def test_patient_rows_from_the_store(tmp_path, monkeypatch):
    store = FeatureStore(str(tmp_path / "store"))
    t = pd.Timestamp("2020-01-01", tz="UTC")
    store.write_table("clinical", pd.DataFrame({
        "patient_id": ["A", "A", "B"], "event_time": [t, t + pd.Timedelta(days=30), t],
        "age_at_diagnosis_years": [60.0, 61.0, 70.0], "weight_lbs": [150.0, 151.0, np.nan]}))
    store.write_table("expression", pd.DataFrame({"patient_id": ["A"], "event_time": [t], "MKI67": [2.5],
                                                  "TOP2A": [1.0], "ESR1": [0.5]}))
    x, missing = patient_rows(store, FEATURES, ["A", "B"])
    np.testing.assert_array_equal(x[0], [61.0, 151.0, 1.0, 2.5, 1.0, 0.5, 1.0])  # A's latest clinical row
    assert x[1, 0] == 70.0 and np.isnan(x[1, 1]) and x[1, 2] == 1.0
    assert np.isnan(x[1, 3:6]).all() and x[1, 6] == 0.0  # B has no expression: NaN values, flag 0
    assert missing == {"A": [], "B": ["expression"]}
    monkeypatch.setenv("MMRAY_PSEUDONYM_KEY", "k" * 32)
    from mmray.ingest.pseudonym import pseudonymiser_from_env

    psn = pseudonymiser_from_env()("TCGA-1")
    assert resolve_patients({psn, "B"}, ["TCGA-1", "B", "nope"]) == ([psn, "B"], ["nope"])
