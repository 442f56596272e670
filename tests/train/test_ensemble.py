"""Classical families on store folds (fold-fitted preprocessing, missing modalities) and the nested ensemble.

The leak test: the ensemble's test-fold predictions do not change when the test fold's labels are scrambled
(nothing of the test fold is fitted on), and they do change when training labels are.
"""

from __future__ import annotations

import numpy as np
import pytest
from train_testdata import write_tiny_store

from mmray.errors import DataError
from mmray.store import training_table
from mmray.train.ensemble import StackedEnsemble, fit_fold_ensemble, parse_member
from mmray.train.fold_classic import fit_fold_classic
from mmray.train.fold_fit import FoldRows, FoldSettings, fold_rows
from mmray.train.folds import make_folds

MODS = ("clinical", "expression", "radiomics")
SETTINGS = FoldSettings(screen={"expression": {"max_p": 0.5, "top_k": 6}})
SMALL = {"members": ["coxph_ridge", "rsf", "coxph_ridge@clinical"], "member_hparams": {"rsf": {"n_estimators": 20}}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    st, cohort = write_tiny_store(tmp_path_factory.mktemp("ens") / "s", n=120, seed=4, p_missing=0.25)
    labels = st.read_table("labels")
    table = training_table(st, labels, groups=["clinical", "expression", "radiomics"])
    folds = make_folds(labels.assign(event=labels["event"].astype(bool)), n_folds=3, seed=0)
    return table, folds


def _rows(data, fold=0) -> FoldRows:
    table, folds = data
    return fold_rows(table, folds, fold=fold, val_fraction=0.2, seed=0)


@pytest.mark.parametrize("family", ["coxnet", "coxph_ridge", "rsf", "gbsa"])
def test_family_on_a_fold_beats_chance_with_missing_modalities(data, family):
    rows = _rows(data)
    assert not rows.train["has_radiomics"].all()  # some patients lack a modality
    hp = {"n_estimators": 40} if family in ("rsf", "gbsa") else {}
    out = fit_fold_classic(model=family, hparams=hp, task="survival_cox", modalities=MODS, rows=rows, fold=0,
                           settings=SETTINGS)
    m = out.metrics
    assert m["harrell_c"] > 0.65 and m["uno_c"] > 0.6 and m["td_auc"] > 0.6, (family, m)
    assert 0 < m["ibs"] < 0.25, m  # curves from the model itself: better than the 0.25 of a coin
    assert len(out.predictions) == len(rows.test) and out.predictions["risk"].notna().all()


def _scrambled(rows: FoldRows, part: str, seed: int = 0) -> FoldRows:
    rng = np.random.default_rng(seed)
    frame = getattr(rows, part).copy()
    perm = rng.permutation(len(frame))
    frame["time_days"] = frame["time_days"].to_numpy()[perm] * rng.uniform(0.5, 1.5, len(frame))
    frame["event"] = rng.permutation(frame["event"].to_numpy())
    return FoldRows(**{**{k: getattr(rows, k) for k in ("fit", "val", "test")}, part: frame})


@pytest.mark.parametrize("method", ["stack", "rank"])
def test_ensemble_test_fold_predictions_ignore_test_labels(data, method):
    rows = _rows(data, fold=1)
    kw = dict(hparams={**SMALL, "method": method}, task="survival_cox", modalities=MODS, fold=1, settings=SETTINGS)
    ref = fit_fold_ensemble(rows=rows, **kw)
    leaked = fit_fold_ensemble(rows=_scrambled(rows, "test"), **kw)
    np.testing.assert_array_equal(leaked.predictions["risk"].to_numpy(), ref.predictions["risk"].to_numpy())
    moved = fit_fold_ensemble(rows=_scrambled(rows, "fit"), **kw)  # the check can fail: training labels matter
    assert not np.allclose(moved.predictions["risk"].to_numpy(), ref.predictions["risk"].to_numpy())
    assert ref.metrics["harrell_c"] > 0.65, ref.metrics


def test_stack_meta_learner_sees_only_out_of_fold_risks_of_the_training_rows(data):
    rows = _rows(data)
    ens = StackedEnsemble(modalities=MODS, top_k_var={}, screen=SETTINGS.screen, **SMALL).fit(rows.train)
    assert ens.oof_.shape == (len(rows.train), 3) and np.isfinite(ens.oof_).all()
    # out-of-fold risks differ from the refitted members' in-sample risks (they come from other fits)
    assert not np.allclose(ens.oof_, ens.member_risks(rows.train))
    # the meta-learner is a Cox model on exactly those columns: its risk is their weighted sum
    w = np.array(list(ens.weights.values()))
    np.testing.assert_allclose(ens.predict(rows.test), ens.member_risks(rows.test) @ w, rtol=1e-9, atol=1e-9)


def test_rank_average_is_the_mean_training_percentile_of_member_risks(data):
    rows = _rows(data)
    ens = StackedEnsemble(modalities=MODS, method="rank", top_k_var={}, screen=SETTINGS.screen, **SMALL)
    ens.fit(rows.train)
    want = []
    for m in ens.fitted_:
        train_r, test_r = m.pipe.predict(rows.train), m.pipe.predict(rows.test)
        want.append([(np.sum(train_r < r) + 0.5 * np.sum(train_r == r)) / len(train_r) for r in test_r])
    np.testing.assert_allclose(ens.predict(rows.test), np.mean(want, axis=0), rtol=1e-12)


def test_members_are_checked():
    assert parse_member("coxnet@clinical+radiomics", MODS) == ("coxnet", ("clinical", "radiomics"))
    assert parse_member("rsf", MODS) == ("rsf", MODS)
    with pytest.raises(DataError, match="unknown family"):
        parse_member("svm", MODS)
    with pytest.raises(DataError, match="not in the ensemble's set"):
        parse_member("coxnet@slide", MODS)
    with pytest.raises(DataError, match="method"):
        StackedEnsemble(modalities=MODS, method="vote")
