"""The Serve application over real HTTP on 127.0.0.1 (conftest.py starts it): predictions, errors, auth,
LRU eviction."""

from __future__ import annotations

import time

import mlflow
import numpy as np
import pytest
import requests
from .serve_testdata import MODELS, TOKEN

from mmray.registry.config import RegistryConfig
from mmray.registry.registry import Registry
from mmray.serve import ServeError

pytestmark = pytest.mark.integration


def _post(url, body, *, model=None, token=TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if model:
        headers["serve_multiplexed_model_id"] = model
    return requests.post(f"{url}/v1/predict", json=body, headers=headers, timeout=60)


def test_health_and_models(server, client):
    assert requests.get(f"{server['url']}/healthz", timeout=10).json() == {"status": "ok"}  # no token needed
    listed = {m["name"]: m for m in client.models()}
    assert sorted(listed) == sorted(MODELS)
    imm = listed["sig__SIG_IMMUNE_CYTOLYTIC"]
    assert imm["version"] == "1" and imm["alias"] == "champion" and imm["n_features"] == 15
    assert "CD8A" in imm["features"] and "GNLY" not in imm["features"]  # off-platform gene not used
    assert 0.0 <= imm["metrics"]["harrell_c_mean"] <= 1.0 and "harrell_c_fold4" in imm["metrics"]


def test_predictions_equal_offline_predictions(server, client, patients):
    for name in MODELS[:2]:
        offline = mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(patients)
        features = client.models()[[m["name"] for m in client.models()].index(name)]["features"]
        # whole expression profiles by name: the model picks its genes
        got = client.predict(name, patients.to_dict(orient="records"))
        assert got["model"] == name and got["n"] == 5
        np.testing.assert_allclose(got["risk"], offline["risk"].to_numpy(), rtol=1e-12)
        surv = got["survival"]
        assert surv["times_days"] == [365.0, 730.0, 1095.0, 1825.0]
        cols = [f"surv_{t:g}d" for t in surv["times_days"]]
        np.testing.assert_allclose(surv["probabilities"], offline[cols].to_numpy(), rtol=1e-12)
        # ordered rows, model named in the body instead of the header
        r = _post(server["url"], {"model": name, "rows": patients[features].to_numpy().tolist()})
        assert r.status_code == 200
        np.testing.assert_allclose(r.json()["risk"], offline["risk"].to_numpy(), rtol=1e-12)


def test_invalid_inputs_get_422_naming_the_features(server, client, patients):
    name = "sig__SIG_PROLIFERATION"
    inst = patients.head(2).to_dict(orient="records")
    del inst[0]["MKI67"]
    inst[1]["TOP2A"] = "not-a-number-123"
    r = _post(server["url"], {"instances": inst}, model=name)
    assert r.status_code == 422
    body = r.json()
    assert body["missing_features"] == ["MKI67"] and body["non_numeric_features"] == ["TOP2A"]
    assert "MKI67" in body["message"] and "TOP2A" in body["message"] and "not-a-number-123" not in r.text
    null = _post(server["url"], {"instances": [{**patients.iloc[0].to_dict(), "CCNB1": None}]}, model=name)
    assert null.status_code == 422 and null.json()["non_numeric_features"] == ["CCNB1"]
    short = _post(server["url"], {"rows": [[1.0, 2.0]]}, model=name)
    assert short.status_code == 422 and short.json()["error"] == "invalid_row_length"
    assert _post(server["url"], {"rows": [[1.0]]}).status_code == 422  # no model named
    with pytest.raises(ServeError) as info:
        client.predict(name, [{"MKI67": 1.0}])
    assert info.value.status == 422 and "TOP2A" in info.value.body["missing_features"]


def test_unknown_model_is_404(server, patients):
    r = _post(server["url"], {"instances": patients.head(1).to_dict(orient="records")}, model="sig__NO_SUCH")
    assert r.status_code == 404 and r.json()["error"] == "unknown_model"
    outside = _post(server["url"], {"rows": [[1.0]]}, model="other_prefix_model")
    assert outside.status_code == 404


def test_token_is_required(server, patients):
    body = {"instances": patients.head(1).to_dict(orient="records")}
    for token in (None, "wrong-token"):
        r = _post(server["url"], body, model=MODELS[0], token=token)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        assert requests.get(f"{server['url']}/v1/models", timeout=10,
                            headers={"Authorization": f"Bearer {token}"} if token else {}).status_code == 401
    basic = requests.get(f"{server['url']}/v1/models", headers={"Authorization": f"Basic {TOKEN}"}, timeout=10)
    assert basic.status_code == 401
    assert _post(server["url"], body, model=MODELS[0]).status_code == 200


def test_lru_eviction_reloads_the_evicted_model(server, client, patients):
    """The replica holds 2 models; using a third evicts the least recently used one."""
    a, b, c = MODELS[1], MODELS[2], MODELS[3]
    rows = patients.head(1).to_dict(orient="records")
    first = client.predict(a, rows)
    client.predict(b, rows)
    before = client.stats()
    assert before["max_models_per_replica"] == 2 and before["loaded_models"] == sorted([a, b])
    client.predict(c, rows)  # evicts a (least recently used)
    mid = client.stats()
    assert mid["loaded_models"] == sorted([b, c])
    assert mid["load_counts"][c] == before["load_counts"].get(c, 0) + 1
    again = client.predict(a, rows)  # a is loaded again, evicting b
    after = client.stats()
    assert after["load_counts"][a] == before["load_counts"][a] + 1
    assert after["local_reloads"] == mid["local_reloads"] + 1  # from the replica's copy, not the registry
    assert after["loaded_models"] == sorted([a, c])
    assert again["risk"] == first["risk"]
    client.predict(a, rows)  # cached now: a request, no load
    final = client.stats()
    assert final["loads"] == after["loads"] and final["requests"] == after["requests"] + 1
    assert 0.0 < final["cache_hit_rate"] < 1.0


def test_a_new_champion_is_served_after_the_alias_refresh(server, client, patients):
    name = MODELS[3]
    rows = patients.head(2).to_dict(orient="records")
    assert client.predict(name, rows)["version"] == "1"
    loads = client.stats()["load_counts"][name]
    reg = Registry(RegistryConfig(), store=server["store"])
    old = reg.champion(name)
    new = reg.client.create_model_version(name, old.source, run_id=old.run_id, tags=old.tags)
    reg.client.set_registered_model_alias(name, "champion", new.version)
    deadline = time.monotonic() + 10
    while (got := client.predict(name, rows))["version"] != str(new.version) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert got["version"] == "2"
    assert client.stats()["load_counts"][name] == loads + 1  # swapped in place, once
