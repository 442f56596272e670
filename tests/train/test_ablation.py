"""The ablation table's CT comparison: radiomics vs ct_deep vs both, with deltas against the best radiomics row."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mmray.report.performance import ct_section
from mmray.train.ablation import ablation_table, ct_comparison


def _summary():
    rows = [("single", "radiomics", "radiomics", 0.634), ("heec", "radiomics", "radiomics", 0.610),
            ("single", "ct_deep", "ct_deep", 0.620), ("early_fusion", "ct", "radiomics,ct_deep", 0.651),
            ("single", "clinical", "clinical", 0.600), ("early_fusion", "all", "clinical,radiomics", 0.640)]
    return pd.DataFrame([{"task": "survival_cox", "model": m, "modality_set": s, "modalities": mods,
                          "headline": "harrell_c", "harrell_c_mean": c, "harrell_c_sd": 0.02, "n_folds_ok": 5}
                         for m, s, mods, c in rows])


def test_ct_comparison_keeps_the_three_ct_variants_with_deltas_against_the_best_radiomics_row():
    ct = ct_comparison(ablation_table(_summary()))
    assert list(ct["features"]) == ["radiomics", "radiomics", "ct_deep", "radiomics + ct_deep"]
    assert list(ct["model"]) == ["single", "heec", "single", "early_fusion"]
    np.testing.assert_allclose(ct["delta_vs_radiomics"], [0.0, 0.610 - 0.634, 0.620 - 0.634, 0.651 - 0.634])
    html = "".join(ct_section(ablation_table(_summary())))
    assert "radiomics vs deep features" in html and "radiomics + ct_deep <b>0.651</b>" in html
    assert ct_section(ablation_table(_summary().iloc[4:])) == []  # no CT sets trained: no section


def test_ct_comparison_without_radiomics_rows_has_no_delta():
    ct = ct_comparison(ablation_table(_summary().iloc[[2, 4]]))
    assert list(ct["features"]) == ["ct_deep"] and np.isnan(ct["delta_vs_radiomics"].iloc[0])
    assert ct_comparison(pd.DataFrame()).empty


