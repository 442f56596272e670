"""Request validation of the HTTP API (no server)."""

from __future__ import annotations

import numpy as np
import pytest

from mmray.config import load_config
from mmray.errors import ConfigError
from mmray.serve.config import ServeConfig, replica_process_env, serve_process_env, token_digest
from mmray.serve.schemas import ApiError, model_id, parse_body, parse_inputs, prediction_body

FEATURES = ["MKI67", "TOP2A", "CD8A"]


def _err(fn, *a, **kw) -> ApiError:
    with pytest.raises(ApiError) as info:
        fn(*a, **kw)
    return info.value


def test_instances_and_rows_give_the_same_matrix():
    inst = parse_inputs({"instances": [{"CD8A": 3, "MKI67": 1.5, "TOP2A": 2.0, "EXTRA": "ignored"}]}, FEATURES)
    rows = parse_inputs({"rows": [[1.5, 2.0, 3]]}, FEATURES)
    np.testing.assert_array_equal(inst, [[1.5, 2.0, 3.0]])
    np.testing.assert_array_equal(inst, rows)


def test_missing_and_non_numeric_features_are_named_without_values():
    body = {"instances": [{"MKI67": 1.0, "TOP2A": "secret-value-7"}, {"MKI67": None, "TOP2A": True, "CD8A": 1}]}
    e = _err(parse_inputs, body, FEATURES)
    assert e.status == 422 and e.error == "invalid_features"
    assert e.extra["missing_features"] == ["CD8A"]
    assert e.extra["non_numeric_features"] == ["MKI67", "TOP2A"]
    assert e.extra["instances"] == [0, 1]
    assert "CD8A" in e.message and "TOP2A" in e.message and "secret-value-7" not in str(e.body())
    nan = _err(parse_inputs, {"rows": [[1.0, float("nan"), 2.0]]}, FEATURES)
    assert nan.extra["non_numeric_features"] == ["TOP2A"]


def test_malformed_bodies():
    assert _err(parse_inputs, {"rows": [[1.0, 2.0]]}, FEATURES).error == "invalid_row_length"
    assert _err(parse_inputs, {"rows": [], }, FEATURES).error == "invalid_body"
    assert _err(parse_inputs, {"instances": [{}], "rows": [[1, 2, 3]]}, FEATURES).error == "invalid_body"
    assert _err(parse_inputs, {"instances": [[1, 2, 3]]}, FEATURES).error == "invalid_body"
    assert _err(parse_inputs, {"rows": [[1, 2, 3]] * 3}, FEATURES, max_instances=2).error == "too_many_instances"
    assert _err(parse_body, b"{not json").status == 422
    assert _err(parse_body, b"[1, 2]").error == "invalid_body"


def test_model_from_header_or_body():
    assert model_id("sig__A", {}) == "sig__A"
    assert model_id(None, {"model": "sig__B"}) == "sig__B"
    assert model_id("sig__A", {"model": "sig__A"}) == "sig__A"
    assert _err(model_id, "sig__A", {"model": "sig__B"}).error == "conflicting_model"
    assert _err(model_id, None, {}).error == "missing_model"
    assert _err(model_id, None, {"model": 3}).status == 422
    assert _err(model_id, "x" * 300, {}).status == 404


def test_prediction_body_shape():
    out = prediction_body(name="m", version="2", risk=np.array([0.1, -0.2]), survival=np.array([[0.9], [0.95]]),
                          times_days=np.array([365.0]))
    assert out == {"model": "m", "version": "2", "n": 2, "risk": [0.1, -0.2],
                   "survival": {"times_days": [365.0], "probabilities": [[0.9], [0.95]]}}


def test_serve_config_validation_and_token(monkeypatch):
    with pytest.raises(ConfigError) as info:
        load_config(ServeConfig, None, ["port=0", "max_models_per_replica=0", "route_prefix=v1"])
    assert {p for p, _ in info.value.problems} == {"port", "max_models_per_replica", "route_prefix"}
    with pytest.raises(ConfigError) as info:
        load_config(ServeConfig, None, ["autoscaling.max_replicas=0"])
    assert [p for p, _ in info.value.problems] == ["autoscaling"]
    cfg = load_config(ServeConfig, None, ["autoscaling.min_replicas=1", "autoscaling.max_replicas=3"])
    assert cfg.autoscaling.max_replicas == 3
    monkeypatch.delenv("MMRAY_SERVE_TOKEN", raising=False)
    assert token_digest(ServeConfig()) is None
    monkeypatch.setenv("MMRAY_SERVE_TOKEN", "abc")
    assert token_digest(ServeConfig()) == token_digest(ServeConfig(token="abc", token_env=""))


def test_serve_process_environment():
    """Throughput-optimised Serve by default (proxy -> replica over gRPC, direct ingress off so the
    proxy keeps routing multiplexed requests); the user's replica_env wins for the replicas."""
    cfg = ServeConfig()
    assert serve_process_env(cfg) == {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_PROXY_USE_GRPC": "1",
                                      "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}
    custom = load_config(ServeConfig, None, ["replica_env.AWS_REGION=eu-west-1",
                                             "replica_env.RAY_SERVE_PROXY_USE_GRPC='0'"])
    assert replica_process_env(custom) == {**serve_process_env(cfg), "AWS_REGION": "eu-west-1",
                                           "RAY_SERVE_PROXY_USE_GRPC": "0"}
    plain = load_config(ServeConfig, None, ["throughput_optimized=false", "replica_env.AWS_REGION=eu-west-1"])
    assert serve_process_env(plain) == {} and replica_process_env(plain) == {"AWS_REGION": "eu-west-1"}
