"""Request validation of the HTTP API (no server)."""

from __future__ import annotations

import asyncio

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


def test_integers_past_float_range_and_deep_nesting_are_422_not_500():
    big = _err(parse_inputs, {"rows": [[1.0, 10**309, -(10**400)]]}, FEATURES)  # OverflowError before
    assert big.error == "invalid_features" and big.extra["non_numeric_features"] == ["TOP2A", "CD8A"]
    np.testing.assert_array_equal(parse_inputs({"rows": [[2**64, -(2**80), 0]]}, FEATURES), [[2.0**64, -(2.0**80), 0]])
    deep = _err(parse_body, b"[" * 100_000 + b"]" * 100_000)  # RecursionError before
    assert deep.status == 422 and deep.error == "invalid_json"


def test_a_prediction_that_overflows_is_422_naming_the_instances():
    e = _err(prediction_body, name="m", version="1", risk=np.array([0.1, np.inf, 0.3]),
             survival=np.array([[0.9], [0.0], [np.nan]]), times_days=np.array([365.0]))
    assert e.status == 422 and e.error == "prediction_out_of_range" and e.extra["instances"] == [1, 2]
    assert _err(prediction_body, name="m", version="1", risk=np.array([np.nan]), survival=None,
                times_days=()).extra["instances"] == [0]


def _request(chunks: list[bytes], headers: dict[str, str]):
    """A Starlette request whose body arrives in ``chunks``; returns it and the chunks handed out."""
    from starlette.requests import Request

    given: list[bytes] = []

    async def receive():
        if len(given) < len(chunks):
            given.append(chunks[len(given)])
            return {"type": "http.request", "body": given[-1], "more_body": len(given) < len(chunks)}
        return {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "path": "/v1/predict", "query_string": b"",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    return Request(scope, receive), given


def test_the_body_limit_is_enforced_before_reading_or_while_streaming():
    from mmray.serve.limits import read_body

    req, given = _request([b"x" * 100] * 50, {"content-length": "5000"})
    e = _err(asyncio.run, read_body(req, max_bytes=4096))
    assert e.status == 413 and e.error == "request_too_large" and e.extra == {"max_request_bytes": 4096}
    assert given == []  # refused on the declared length, nothing read
    req, given = _request([b"x" * 1000] * 50, {})  # chunked: no Content-Length
    assert _err(asyncio.run, read_body(req, max_bytes=4096)).status == 413
    assert len(given) == 5  # stopped at the chunk that passed the limit
    req, _ = _request([b'{"rows": ', b"[[1, 2, 3]]}"], {})
    assert asyncio.run(read_body(req, max_bytes=4096)) == b'{"rows": [[1, 2, 3]]}'
    req, _ = _request([b"{}"], {"content-length": "lots"})
    assert _err(asyncio.run, read_body(req, max_bytes=4096)).status == 400


def test_unknown_model_names_do_not_grow_a_replica_without_bound(tmp_path, monkeypatch):
    """A storm of made-up names (each a registry miss, cached a few seconds) keeps the cache bounded."""
    from mmray.serve import models

    monkeypatch.setattr(models, "MAX_RESOLVED", 8)
    catalog = models.Catalog(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", alias="champion", prefix="sig__")
    sizes = []
    for i in range(30):
        assert catalog.resolve(f"sig__MADE_UP_{i}") is None
        sizes.append(len(catalog._resolved))
    assert max(sizes) == 8 and catalog.cached_version("sig__MADE_UP_29").version is None
