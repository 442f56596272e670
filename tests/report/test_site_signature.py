"""Site signature: out-of-fold AUC of the tissue source site from slide features, and its report part."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mmray.report.site_signature import SiteSignatureConfig, oof_site_auc, site_signature_report, \
    site_signature_sections
from mmray.store import FeatureStore


def _slides(n: int = 90, shift: float = 0.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    site = np.array(["05", "38", "44"])[rng.integers(0, 3, n)]
    patient = np.array([f"p{i // 2}" for i in range(n)])  # two slides per patient, one site per patient
    site = site[np.arange(n) // 2 * 2]
    X = rng.standard_normal((n, 30))
    X[:, :3] += shift * (site[:, None] == np.array(["05", "38", "44"])[None])
    return X, site, patient


def test_a_planted_site_shift_is_found_and_noise_is_not():
    cfg = SiteSignatureConfig()
    X, site, patient = _slides(shift=2.5)
    assert oof_site_auc(X, site, groups=patient, cfg=cfg) > 0.9
    X, site, patient = _slides(shift=0.0, seed=1)
    assert abs(oof_site_auc(X, site, groups=patient, cfg=cfg) - 0.5) < 0.12
    assert oof_site_auc(X, np.full(len(site), "05"), groups=patient, cfg=cfg) is None


def test_report_from_stored_slide_features_names_sites_by_rank_only(tmp_path):
    store = FeatureStore(str(tmp_path / "store"))
    X, site, patient = _slides(shift=2.5)
    frame = pd.DataFrame(X, columns=[f"tile_mean_{i}" for i in range(X.shape[1])])
    frame.insert(0, "slide_id", [f"S{i:03d}" for i in range(len(site))])
    frame.insert(1, "patient_id", patient)
    frame.insert(2, "event_time", pd.Timestamp("2020-01-01", tz="UTC"))
    store.write_table("wsi_slide", frame, kind="bag", bag_key="slide_id")
    sites = dict(zip(patient, site))
    rep = site_signature_report(store, sites, cfg=SiteSignatureConfig(), source="clinical column", stain=None)
    (check,) = rep["checks"]
    assert check["features"] == "stored" and check["n_slides"] == len(site) and check["auc"] > 0.9
    assert check["flagged"] and rep["stain_method"] == "none"
    html = "".join(site_signature_sections(rep))
    assert "Site signature" in html and "site 1" in html and "38" not in html.replace("0.38", "")
    tiny = site_signature_report(store, dict(list(sites.items())[:5]), cfg=SiteSignatureConfig(), source="x",
                                 stain=None)
    assert tiny["checks"][0]["auc"] is None and "too few" in tiny["notes"][0]


@pytest.mark.parametrize("bad", [{"folds": 1}, {"auc_threshold": 0.4}])
def test_config_problems_are_reported(bad):
    assert list(SiteSignatureConfig(**bad).validate())
