"""The failures table: per-stage records of inputs a pipeline could not use."""

from __future__ import annotations

import json

import pytest

from mmray.errors import StoreError


def test_failures_round_trip(store):
    assert store.failures().empty
    assert list(store.failures().columns) == ["stage", "item", "patient_id", "reason", "details",
                                              "recorded_utc", "batch"]
    n = store.record_failures("ingest", [
        {"item": "s3://cohort/P001.svs", "patient_id": "P001", "reason": "not a TIFF"},
        {"item": "P002/ct", "patient_id": "P002", "reason": "SEG misaligned", "stage": "ingest",
         "offset_mm": 2.5},
    ])
    assert n == 2
    store.record_failures("features", [{"item": "row 7", "patient_id": None,
                                        "reason": "no patient id"}])
    assert store.record_failures("features", []) == 0

    everything = store.failures()
    assert len(everything) == 3 and set(everything["stage"]) == {"ingest", "features"}
    ingest = store.failures("ingest").sort_values("item").reset_index(drop=True)
    assert ingest["item"].tolist() == ["P002/ct", "s3://cohort/P001.svs"]
    assert ingest["reason"].tolist() == ["SEG misaligned", "not a TIFF"]
    assert json.loads(ingest.loc[0, "details"]) == {"offset_mm": 2.5}
    assert str(ingest["recorded_utc"].dtype) == "datetime64[us, UTC]"
    feats = store.failures("features")
    assert feats["patient_id"].isna().all() and feats["item"].tolist() == ["row 7"]
    assert store.failures("tune").empty
    assert store.groups() == []  # failures are not a feature group


def test_failures_are_validated(tmp_path):
    from mmray.store import FeatureStore

    store = FeatureStore(tmp_path)
    with pytest.raises(StoreError, match=r"failures\[1\] of stage 'ingest': missing key\(s\) \['reason'\]"):
        store.record_failures("ingest", [{"item": "a", "patient_id": "P1", "reason": "x"},
                                         {"item": "b", "patient_id": "P2"}])
    with pytest.raises(StoreError, match="says stage 'train' but was recorded for stage 'ingest'"):
        store.record_failures("ingest", [{"item": "a", "patient_id": "P1", "reason": "x",
                                          "stage": "train"}])
    with pytest.raises(StoreError, match="invalid stage name"):
        store.record_failures("../etc", [])
    assert store.failures().empty  # nothing half-recorded
