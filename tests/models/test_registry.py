"""The model registry: names, hyperparameters, defaults a tuner can read."""

from __future__ import annotations

import inspect
import json

import pytest
import torch

from mmray.errors import DataError, UnknownNameError
from mmray.models.heec import HEEC
from mmray.models.registry import MODELS, TRAIN_DEFAULTS, build_model, describe

DIMS = {"clinical": 4, "expression": 10}


def test_unknown_model_lists_the_valid_ones():
    with pytest.raises(UnknownNameError) as err:
        build_model("transformer_xl", task="survival_cox", modality_dims=DIMS, n_out=1)
    for name in ("single", "early_fusion", "late_fusion", "attention_fusion", "porpoise", "heec"):
        assert name in str(err.value)


def test_unknown_hyperparameter_lists_the_valid_ones():
    with pytest.raises(DataError, match="enc_dim"):
        build_model("early_fusion", task="survival_cox", modality_dims=DIMS, n_out=1, hidden_size=3)


def test_task_and_output_checks():
    with pytest.raises(DataError, match="n_out must be 1"):
        build_model("early_fusion", task="survival_cox", modality_dims=DIMS, n_out=4)
    with pytest.raises(UnknownNameError, match="subtype"):
        build_model("early_fusion", task="grade", modality_dims=DIMS, n_out=3)
    with pytest.raises(DataError, match="bag_dim"):
        build_model("porpoise", task="subtype", modality_dims=DIMS, n_out=3)
    with pytest.raises(DataError, match="tasks"):
        build_model("heec", task="survival_discrete", modality_dims=DIMS, n_out=4)
    with pytest.raises(DataError, match="modality="):
        build_model("single", task="subtype", modality_dims=DIMS, n_out=3)


def test_describe_defaults_are_what_the_builders_use():
    info = describe()
    assert set(info) == set(MODELS)
    json.dumps(info)  # a tuner can ship it anywhere
    for name, spec in MODELS.items():
        params = inspect.signature(spec.builder.__init__).parameters
        for hp, meta in info[name]["hparams"].items():
            assert params[hp].default == meta["default"], (name, hp)
            if meta["kind"] in ("float", "int"):
                assert meta["low"] <= meta["default"] <= meta["high"], (name, hp)
            if meta["kind"] == "choice":
                assert meta["default"] in meta["choices"], (name, hp)
    assert info["attention_fusion"]["train"]["weight_decay"]["default"] == TRAIN_DEFAULTS["weight_decay"].default


def test_build_every_model_with_overrides():
    m = build_model("attention_fusion", task="subtype", modality_dims=DIMS, n_out=3, dim=16, n_heads=4)
    assert m.modalities == ("clinical", "expression") and m.encoder.layers[0].self_attn.num_heads == 4
    s = build_model("single", task="survival_cox", modality_dims=DIMS, n_out=1, modality="clinical")
    assert s.modalities == ("clinical",)
    p = build_model("porpoise", task="survival_discrete", modality_dims=DIMS, n_out=4, bag_dim=7)
    assert p.modalities == ("clinical", "expression", "tiles")
    h = build_model("heec", task="subtype", modality_dims={}, n_out=3, num_leaves=5, seed=3)
    assert isinstance(h, HEEC) and h.params["num_leaves"] == 5 and h.params["num_class"] == 3
    assert isinstance(build_model("late_fusion", task="survival_cox", modality_dims=DIMS, n_out=1), torch.nn.Module)
