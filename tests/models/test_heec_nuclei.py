"""HEEC screens every wide group on the training rows only, and nucleus features trace to a tile."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mmray.features.nuclei_aggregate import located_features
from mmray.models.heec import HEEC, default_feature_of, trace_importances


def _cohort(n: int, seed: int):
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=n)
    X = pd.DataFrame({"clinical__age": rng.normal(size=n),
                      "wsi_nuclei_patient__nuclei_per_mm2": 2000 + 400 * signal + 100 * rng.normal(size=n),
                      **{f"wsi_nuclei_patient__noise_{j}_max": rng.normal(size=n) for j in range(40)},
                      **{f"wsi_patient__tile_max_{j}": rng.normal(size=n) for j in range(60)}})
    t = rng.exponential(size=n) * np.exp(-1.2 * signal) * 500 + 1
    e = rng.random(n) < 0.8
    return X, t, e


def test_every_wide_group_is_screened_and_the_planted_nucleus_feature_kept():
    X, t, e = _cohort(300, seed=1)
    model = HEEC(task="survival_cox", num_threads=1, n_estimators=60).fit(X, time_days=t, event=e)
    assert "wsi_nuclei_patient__nuclei_per_mm2" in model.features_
    assert "clinical__age" in model.features_  # small groups are not screened
    kept_noise = [c for c in model.features_ if "noise" in c or "tile_max" in c]
    assert len(kept_noise) <= 0.15 * 100  # p <= 0.05 lets about 5% of pure noise through
    assert set(model.group_p_values_) == {"wsi_patient", "wsi_nuclei_patient"}
    assert model.group_p_values_["wsi_nuclei_patient"]["wsi_nuclei_patient__nuclei_per_mm2"] < 1e-6


def test_screening_is_fitted_on_the_training_rows_only():
    X, t, e = _cohort(300, seed=2)
    train = np.arange(200)
    a = HEEC(task="survival_cox", num_threads=1, n_estimators=30).fit(X.iloc[train], time_days=t[train],
                                                                     event=e[train])
    # held-out rows that would make a noise column look perfectly prognostic change nothing
    X2, t2 = X.copy(), t.copy()
    t2[200:] = np.exp(-3 * X2["wsi_nuclei_patient__noise_0_max"].to_numpy()[200:]) * 100
    b = HEEC(task="survival_cox", num_threads=1, n_estimators=30).fit(X2.iloc[train], time_days=t2[train],
                                                                      event=e[train])
    assert a.features_ == b.features_
    whole = HEEC(task="survival_cox", num_threads=1, n_estimators=30).fit(X2, time_days=t2, event=e)
    assert "wsi_nuclei_patient__noise_0_max" in whole.features_  # it would have been kept had it seen them


def test_nucleus_importances_trace_to_the_tile_of_the_extremum():
    assert default_feature_of("wsi_nuclei_patient__density_per_mm2_max") == "nuclei_density_per_mm2_max"
    assert default_feature_of("wsi_nuclei_patient__density_per_mm2_mean") is None
    assert default_feature_of("wsi_nuclei_patient__nuclei_per_mm2") is None
    patients = pd.DataFrame([{"patient_id": "P1", "density_per_mm2_max": 900.0, "density_per_mm2_argmax_x": 512,
                              "density_per_mm2_argmax_y": 256, "density_per_mm2_argmax_slide": "S1"}])
    coords = located_features(patients, id_col="patient_id")
    top = trace_importances(pd.Series({"wsi_nuclei_patient__density_per_mm2_max": 5.0}), coords, top_k=1)
    assert top[["slide_id", "x", "y", "patient_id"]].values.tolist() == [["S1", 512, 256, "P1"]]
