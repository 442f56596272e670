"""Point-in-time join: never a row from the future; missing modalities stay missing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from mmray.errors import StoreError
from mmray.store import point_in_time_join, training_table

T0 = pd.Timestamp("2020-01-01", tz="UTC")
PATIENTS = ["P0", "P1", "P2", "P3"]


def _day(d: int) -> pd.Timestamp:
    return T0 + pd.Timedelta(days=d)


feature_keys = st.lists(st.tuples(st.sampled_from(PATIENTS), st.integers(0, 40)),
                        unique=True, max_size=30)
label_keys = st.lists(st.tuples(st.sampled_from(PATIENTS + ["P9"]), st.integers(0, 40)),
                      min_size=1, max_size=25)


def _features(keys) -> pd.DataFrame:
    return pd.DataFrame({"patient_id": [p for p, _ in keys],
                         "event_time": [_day(d) for _, d in keys],
                         "value": np.arange(len(keys), dtype=float) + 0.5,
                         "count": np.arange(len(keys)) * 10})


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fkeys=feature_keys, lkeys=label_keys, naive_labels=st.booleans())
def test_joined_row_is_latest_at_or_before_label_time(fkeys, lkeys, naive_labels):
    feats = _features(fkeys).sample(frac=1.0, random_state=0)  # order must not matter
    labels = pd.DataFrame({"patient_id": [p for p, _ in lkeys],
                           "event_time": [_day(d).tz_localize(None) if naive_labels else _day(d)
                                          for _, d in lkeys],
                           "y": np.arange(len(lkeys))},
                          index=pd.Index(np.arange(len(lkeys))[::-1] * 3, name="row"))
    out = point_in_time_join(labels, tables={"omics": feats})

    assert out.index.equals(labels.index) and out["y"].tolist() == labels["y"].tolist()
    for (pid, day), (_, row) in zip(lkeys, out.iterrows()):
        past = [(d, i) for i, (p, d) in enumerate(fkeys) if p == pid and d <= day]
        if not past:
            assert not row["has_omics"]
            assert pd.isna(row["omics__value"]) and pd.isna(row["omics__event_time"])
            continue
        best_day, best_i = max(past)
        assert row["has_omics"]
        assert row["omics__event_time"] <= row["event_time"]  # never from the future
        assert row["omics__event_time"] == _day(best_day)
        assert row["omics__value"] == best_i + 0.5
        assert row["omics__count"] == best_i * 10


@settings(max_examples=40, deadline=None)
@given(bag_keys=st.lists(st.tuples(st.sampled_from(PATIENTS), st.integers(0, 40)),
                         max_size=15),
       lkeys=label_keys)
def test_bag_ids_are_those_at_or_before_label_time(bag_keys, lkeys):
    bags = pd.DataFrame({"bag_id": [f"S{i:02d}" for i in range(len(bag_keys))],
                         "patient_id": [p for p, _ in bag_keys],
                         "event_time": [_day(d) for _, d in bag_keys]})
    labels = pd.DataFrame({"patient_id": [p for p, _ in lkeys],
                           "event_time": [_day(d) for _, d in lkeys]})
    out = point_in_time_join(labels, bags={"tiles": bags})
    for (pid, day), (_, row) in zip(lkeys, out.iterrows()):
        want = [f"S{i:02d}" for _, i in sorted((d, i) for i, (p, d) in enumerate(bag_keys)
                                                if p == pid and d <= day)]
        if want:
            assert row["has_tiles"] and row["tiles__bag_ids"] == want
        else:
            assert not row["has_tiles"] and row["tiles__bag_ids"] is None


def test_duplicate_keys_keep_the_row_written_last():
    feats = pd.DataFrame({"patient_id": ["P0", "P0"], "event_time": ["2020-01-05"] * 2,
                          "value": [1.0, 2.0]})
    labels = pd.DataFrame({"patient_id": ["P0"], "event_time": ["2020-02-01"]})
    assert point_in_time_join(labels, tables={"g": feats})["g__value"].tolist() == [2.0]


def test_label_columns_are_never_overwritten():
    labels = pd.DataFrame({"patient_id": ["P0"], "event_time": ["2020-02-01"], "has_g": [1]})
    feats = pd.DataFrame({"patient_id": ["P0"], "event_time": ["2020-01-01"], "v": [1.0]})
    with pytest.raises(StoreError, match=r"joining group 'g' would overwrite column\(s\) \['has_g'\]"):
        point_in_time_join(labels, tables={"g": feats})


def test_training_table_from_store(store, make_expression, make_tiles):
    expr = make_expression(seed=7)  # P000..P005 at 2020-0m-15 and 2021-0m-15
    store.write_table("expression", expr)
    store.write_table("expression", expr.assign(MKI67=expr["MKI67"] + 100.0))  # v0002
    store.write_table("tiles", make_tiles(seed=7), kind="bag", bag_key="slide_id")  # P000, P001
    labels = pd.DataFrame({
        "patient_id": ["P000", "P001", "P005", "P999", "P000"],
        "event_time": ["2021-01-15", "2021-12-31", "2020-01-01", "2022-01-01", "2019-01-01"],
        "time_days": [100.0, 200.0, 300.0, 400.0, 500.0],
        "event": [1, 0, 1, 0, 1],
    })
    out = training_table(store, labels, groups={"expression": "v0001", "tiles": None})

    assert out.attrs["feature_versions"] == {"expression": "v0001", "tiles": "v0001"}
    assert out["has_expression"].tolist() == [True, True, False, False, False]
    # at-or-before includes the label's own time
    first = expr[(expr.patient_id == "P000") & (expr.event_time == "2021-01-15")]
    assert out.loc[0, "expression__MKI67"] == pytest.approx(first["MKI67"].item())
    later = expr[(expr.patient_id == "P001") & (expr.event_time == "2021-02-15")]
    assert out.loc[1, "expression__ESR1"] == pytest.approx(later["ESR1"].item())
    assert out.loc[0, "expression__event_time"] == pd.Timestamp("2021-01-15", tz="UTC")
    # missing modality: nulls, never zeros
    assert out.loc[[2, 3, 4], ["expression__MKI67", "expression__ESR1"]].isna().all().all()
    assert out["has_tiles"].tolist() == [True, True, False, False, False]
    assert out.loc[0, "tiles__bag_ids"] == ["S00"]  # S01 (2021-01-31) is after the label
    assert out.loc[1, "tiles__bag_ids"] == ["S02", "S03"]
    assert out["time_days"].tolist() == [100.0, 200.0, 300.0, 400.0, 500.0]

    newest = training_table(store, labels, groups=["expression"])
    assert newest.attrs["feature_versions"] == {"expression": "v0002"}
    assert newest.loc[0, "expression__MKI67"] == pytest.approx(first["MKI67"].item() + 100.0)
    with pytest.raises(StoreError, match="no feature group 'radiomics'"):
        training_table(store, labels, groups=["radiomics"])
