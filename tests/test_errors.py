"""Errors survive pickling (Ray moves them between processes) and explain themselves."""

from __future__ import annotations

import pickle

import pytest

from mmray.errors import CohortError, InputError, MmrayError, UnknownNameError


@pytest.mark.parametrize("err", [
    MmrayError("plain"),
    CohortError("bad table"),
    InputError("truncated slide", item="s1.tiff", stage="ingest.wsi"),
    UnknownNameError("encoder", "resnet5", ["resnet50", "vit_small"]),
])
def test_round_trip_through_pickle(err):
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert str(back) == str(err)
    assert back.__dict__ == err.__dict__


def test_unknown_name_lists_valid_names():
    err = UnknownNameError("encoder", "resnet5", ["vit_small", "resnet50"])
    assert str(err) == "unknown encoder 'resnet5'; valid encoders: resnet50, vit_small"
    assert isinstance(err, KeyError) and isinstance(err, MmrayError)
