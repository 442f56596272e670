"""Folds: patients never split, event (and site) stratified, seeded, store-ready."""

from __future__ import annotations

import pandas as pd
import pytest

from mmray.errors import DataError
from mmray.synth.arrays import planted_cohort
from mmray.train.folds import make_folds, site_from_barcode, split


@pytest.fixture(scope="module")
def table():
    c = planted_cohort(300, seed=0)
    tab = c.table()[["patient_id", "time_days", "event"]]
    # a third of the patients have a second label row (a later landmark): the same patient, two rows
    extra = tab.iloc[::3].assign(time_days=lambda d: d.time_days + 1)
    return pd.concat([tab, extra], ignore_index=True)


def test_patients_are_never_split_and_every_patient_has_one_fold(table):
    folds = make_folds(table, n_folds=5, seed=0)
    assert list(folds.columns) == ["patient_id", "fold"]
    assert folds.patient_id.is_unique and set(folds.patient_id) == set(table.patient_id)
    assert set(folds.fold) == set(range(5))
    for k in range(5):
        tr, va = split(table, folds, fold=k)
        assert not set(table.patient_id.iloc[tr]) & set(table.patient_id.iloc[va])
        assert len(tr) + len(va) == len(table)


def test_stratified_by_event_and_site(table):
    folds = make_folds(table, n_folds=5, seed=0)
    per_patient = table.groupby("patient_id").event.any().rename("event").reset_index().merge(folds)
    overall = per_patient.event.mean()
    rates = per_patient.groupby("fold").event.mean()
    assert (rates - overall).abs().max() < 0.05
    sizes = per_patient.fold.value_counts()
    assert sizes.max() - sizes.min() <= 2
    per_patient["site"] = per_patient.patient_id.map(site_from_barcode)
    share = pd.crosstab(per_patient.fold, per_patient.site, normalize="index")
    assert (share - per_patient.site.value_counts(normalize=True)).abs().max().max() < 0.06


def test_seeded_and_seed_dependent(table):
    a = make_folds(table, n_folds=5, seed=3)
    assert a.equals(make_folds(table, n_folds=5, seed=3))
    assert not a.equals(make_folds(table, n_folds=5, seed=4))


def test_site_sources():
    assert site_from_barcode("TCGA-05-4244") == "05" and site_from_barcode("P001") is None
    tab = pd.DataFrame({"patient_id": [f"P{i}" for i in range(40)], "event": [i % 2 == 0 for i in range(40)],
                        "site": ["A"] * 20 + ["B"] * 20})
    folds = make_folds(tab, n_folds=4, seed=0, site_col="site").merge(tab)
    assert (pd.crosstab(folds.fold, folds.site) == 5).all().all()
    with pytest.raises(DataError, match="hospital"):
        make_folds(tab, site_col="hospital")


def test_errors():
    tab = pd.DataFrame({"patient_id": ["a", "b", "c"], "event": [True, False, True]})
    with pytest.raises(DataError, match="3 patients cannot fill 5 folds"):
        make_folds(tab, n_folds=5)
    with pytest.raises(DataError, match="event"):
        make_folds(tab.drop(columns="event"))
    with pytest.raises(DataError, match="missing"):
        make_folds(tab.assign(event=[True, None, False]), n_folds=2)
    folds = make_folds(pd.concat([tab] * 2).assign(patient_id=list("abcdef")), n_folds=2)
    with pytest.raises(DataError, match="no fold"):
        split(pd.DataFrame({"patient_id": ["zz"]}), folds, fold=0)
