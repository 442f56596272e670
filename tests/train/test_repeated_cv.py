"""Repeated CV: identical saved folds for train, tune and signatures; summary over repeats; paired comparison."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon
from train_testdata import write_tiny_store

from mmray.config import load_config
from mmray.store import FeatureStore
from mmray.train.config import TrainJobConfig
from mmray.train.cv import load_job_data, run_train
from mmray.train.folds import load_or_make_folds, repeat_seed
from mmray.train.paired import paired_stats
from mmray.train.preprocess import ModalityLayout
from mmray.train.signature_data import load_signature_data
from mmray.tune.config import TuneJobConfig
from mmray.tune.tuner import train_config

SETS = "modality_sets={omics: [clinical, expression], expression: [expression], clinical: [clinical]}"


def _train_cfg(store, tmp, *extra) -> TrainJobConfig:
    return load_config(TrainJobConfig, None, [
        f"store={store}", f"output={tmp}/out", "folds.n_folds=3", "folds.repeats=2", "n_boot=20",
        "mlflow.enabled=false", SETS, "preprocess.screen={expression: {max_p: 0.5, top_k: 4}}", *extra])


def _by_patient(folds: pd.DataFrame) -> dict:
    return dict(zip(folds["patient_id"].astype(str), folds["fold"].astype(int)))


def test_train_tune_and_signatures_score_on_identical_repeated_folds(tmp_path):
    st, _ = write_tiny_store(tmp_path / "s", n=50, seed=1)
    store = FeatureStore(st.uri)
    train = load_job_data(_train_cfg(st.uri, tmp_path), store, ModalityLayout())
    tune_cfg = load_config(TuneJobConfig, None, [f"store={st.uri}", "model=coxnet", "modalities=[clinical]",
                                                 "folds.n_folds=3", "folds.repeats=2", "mlflow.enabled=false"])
    tune = load_job_data(train_config(tune_cfg, hparams={}, train={}, executor="local", output=None, run_name="t"),
                         store, ModalityLayout())
    sig = load_signature_data(store, n_folds=3, seed=0, repeats=2)
    assert len(train.repeat_folds) == len(tune.repeat_folds) == sig.repeat_fold.shape[0] == 2
    assert train.repeat_versions == tune.repeat_versions  # the same saved versions, not merely equal
    for r in range(2):
        a, b = _by_patient(train.repeat_folds[r]), _by_patient(tune.repeat_folds[r])
        assert a == b
        assert dict(zip(sig.patient_id.astype(str), sig.repeat_fold[r])) == {p: a[p] for p in sig.patient_id}
    assert _by_patient(train.repeat_folds[0]) != _by_patient(train.repeat_folds[1])  # repeats reshuffle
    plain, _ = load_or_make_folds(store, store.read_table("labels"), 3, 0)
    assert _by_patient(train.repeat_folds[0]) == _by_patient(plain)  # repeat 0 is the single-CV folds
    assert repeat_seed(0, 0) == 0 and len({repeat_seed(0, r) for r in range(5)}) == 5


def test_repeated_cv_summary_over_all_folds_and_paired_table(tmp_path):
    st, _ = write_tiny_store(tmp_path / "s", n=70, seed=2)
    cfg = _train_cfg(st.uri, tmp_path, "models=[{name: coxph_ridge}, {name: rsf, sets: [omics], "
                                       "hparams: {n_estimators: 20}}]")
    rep = run_train(cfg)
    assert rep.exit_code == 0, rep.text()
    res = rep.results
    assert set(res["repeat"]) == {0, 1} and len(res) == 4 * 2 * 3
    s = rep.summary.set_index(["model", "modality_set"])
    for (model, set_name), g in res.groupby(["model", "modality_set"]):
        row = s.loc[(model, set_name)]
        assert row["n_folds"] == 6 and row["n_repeats"] == 2
        assert row["harrell_c_mean"] == pytest.approx(g["harrell_c"].mean())
        assert row["harrell_c_sd"] == pytest.approx(g["harrell_c"].std(ddof=1))
    paired = pd.read_csv(f"{tmp_path}/out/paired.csv")
    singles = rep.summary[~rep.summary["modalities"].str.contains(",")]
    best = singles.loc[singles["harrell_c_mean"].idxmax()]
    assert (paired["baseline"] == f"{best['model']}:{best['modality_set']}").all() and len(paired) == 3
    for _, p in paired.iterrows():  # independent recomputation from the results table
        key = ["repeat", "fold"]
        m = res[(res["model"] == p["model"]) & (res["modality_set"] == p["modality_set"])].set_index(key)
        b = res[(res["model"] == best["model"]) & (res["modality_set"] == best["modality_set"])].set_index(key)
        d = (m["harrell_c"] - b.loc[m.index, "harrell_c"]).to_numpy()
        assert p["n_pairs"] == 6 and p["mean_diff"] == pytest.approx(d.mean())
        assert p["wins"] == pytest.approx((d > 0).mean())
        assert p["wilcoxon_p"] == pytest.approx(wilcoxon(d).pvalue)
        assert p["ci_low"] <= p["mean_diff"] <= p["ci_high"]
    assert len(rep.predictions.groupby(["model", "modality_set", "repeat"])) == 8


def test_paired_stats_edge_cases():
    out = paired_stats(np.zeros(5))
    assert out["mean_diff"] == 0 and np.isnan(out["wilcoxon_p"]) and out["wins"] == 0
    assert paired_stats(np.array([]))["n_pairs"] == 0
    d = np.array([0.02, 0.03, -0.01, 0.04, 0.05, 0.01])
    o = paired_stats(d, n_boot=500, seed=1)
    assert o["ci_low"] < d.mean() < o["ci_high"] and o["wins"] == pytest.approx(5 / 6)
