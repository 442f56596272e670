"""The Batch contract: collate of variable bags, masks, zero-filled missing modalities."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmray.errors import DataError
from mmray.models.batch import BAG, PatientDataset, collate, make_batch


def _sample(pid, expr=None, bag_rows=None, **labels):
    bag = None if bag_rows is None else np.full((bag_rows, 3), float(pid[-1]), np.float32)
    return {"patient_id": pid, "features": {"expression": expr, "clinical": [1.0, 2.0]}, "bag": bag, **labels}


def test_collate_concatenates_bags_without_padding():
    samples = [_sample("p0", [1, 2, 3], 2, time_days=10.0, event=True, subtype=1),
               _sample("p1", None, None, time_days=5.0, event=False, subtype=0),
               _sample("p2", [4, 5, 6], 0, time_days=7.0, event=True, subtype=2),
               _sample("p3", [7, 8, 9], 3, time_days=1.0, event=False, subtype=0)]
    b = collate(samples, modalities=("clinical", "expression", BAG))
    assert b.bag_feats.shape == (5, 3) and b.bag_index.tolist() == [0, 0, 3, 3, 3]
    assert b.bag_feats[:, 0].tolist() == [0, 0, 3, 3, 3]
    assert b.mask.tolist() == [[True, True, True], [True, False, False], [True, True, False], [True, True, True]]
    assert b.features["expression"][1].tolist() == [0, 0, 0]  # missing -> zeros, masked
    assert b.time_days.dtype == torch.float32 and b.event.dtype == torch.bool and b.subtype.tolist() == [1, 0, 2, 0]
    assert b.present("expression").tolist() == [True, False, True, True]
    assert b.patient_ids == ["p0", "p1", "p2", "p3"]


def test_collate_nobody_has_a_modality():
    samples = [_sample("p0"), _sample("p1")]
    with pytest.raises(DataError, match="dims="):
        collate(samples, modalities=("expression",))
    b = collate(samples, modalities=("expression", BAG), dims={"expression": 3}, bag_dim=3)
    assert b.features["expression"].shape == (2, 3) and not b.mask.any()
    assert b.bag_feats.shape == (0, 3) and b.bag_index.shape == (0,)


def test_collate_rejects_inconsistent_widths_and_partial_labels():
    with pytest.raises(DataError, match="expression"):
        collate([_sample("p0", [1, 2, 3]), _sample("p1", [1, 2])], modalities=("expression",))
    with pytest.raises(DataError, match="time_days"):
        collate([_sample("p0", [1, 2, 3], time_days=3.0), _sample("p1", [1, 2, 3])], modalities=("expression",))


def test_make_batch_zeroes_masked_slots_even_nan():
    x = np.array([[1.0, 2.0], [np.nan, np.inf]])
    b = make_batch({"clinical": x}, [[True], [False]], modalities=["clinical"])
    assert b.features["clinical"].tolist() == [[1.0, 2.0], [0.0, 0.0]]
    with pytest.raises(DataError, match=r"\[B, 2\]"):
        make_batch({"clinical": x}, [[True], [False]], modalities=["clinical", "expression"])


def test_patient_dataset_round_trip_through_collate():
    ds = PatientDataset({"clinical": np.arange(6.0).reshape(3, 2)}, {"clinical": np.array([True, False, True])},
                        bags=[np.ones((2, 4)), None, np.zeros((0, 4))], time_days=np.array([1.0, 2, 3]),
                        event=np.array([True, False, True]))
    b = collate([ds[i] for i in range(3)], modalities=("clinical", BAG), dims=ds.dims, bag_dim=4)
    assert b.mask.tolist() == [[True, True], [False, False], [True, False]]
    assert b.features["clinical"].tolist() == [[0, 1], [0, 0], [4, 5]]
    assert b.bag_index.tolist() == [0, 0]
    with pytest.raises(DataError, match="number of patients"):
        PatientDataset({"clinical": np.zeros((3, 2))}, {"clinical": np.ones(2, bool)})
