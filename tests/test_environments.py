"""Environments: dev cannot write prod (store and registry), promotion re-gates and copies lineage."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mmray import environments
from mmray.errors import EnvironmentWriteError, PromotionRefused
from mmray.registry.config import RegistryConfig
from mmray.registry.lineage import TAG, Lineage
from mmray.registry.pyfunc import SurvivalPyfunc
from mmray.registry.registry import Candidate, Registry
from mmray.store import FeatureStore

MLFLOW_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", environments.ENV_VAR, environments.FILE_VAR)


def _cohort(n: int, *, seed: int, signal: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Labels and a clinical group where risk = signal * x1 (x2 is noise)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    t = rng.exponential(1000 * np.exp(-signal * x[:, 0]))
    c = rng.exponential(1500, n)
    ids = [f"P{seed}-{i:03d}" for i in range(n)]
    when = pd.Timestamp("2015-01-01", tz="UTC")
    labels = pd.DataFrame({"patient_id": ids, "event_time": when, "time_days": np.minimum(t, c) + 1,
                           "event": t <= c})
    clinical = pd.DataFrame({"patient_id": ids, "event_time": when - pd.Timedelta(days=1),
                             "x1": x[:, 0], "x2": x[:, 1]})
    return labels, clinical


def _fill(store: str, *, seed: int, signal: float, n: int = 120) -> None:
    labels, clinical = _cohort(n, seed=seed, signal=signal)
    st = FeatureStore(store)
    st.write_table("labels", labels)
    st.write_table("clinical", clinical, params={"encoder_id": "none"})


@pytest.fixture()
def envs(tmp_path, monkeypatch):
    for var in MLFLOW_VARS:
        monkeypatch.delenv(var, raising=False)
    yaml_path = tmp_path / "environments.yaml"
    yaml_path.write_text(
        "environments:\n"
        "  dev: {store: dev_store}\n"
        "  prod: {store: prod_store, protected: true, promotion: {gate: {metric: harrell_c, threshold: 0.6}}}\n"
        "  strict: {store: strict_store, promotion: {gate: {metric: harrell_c, threshold: 0.6}}}\n")
    _fill(str(tmp_path / "dev_store"), seed=1, signal=1.5)
    _fill(str(tmp_path / "prod_store"), seed=2, signal=1.5)
    _fill(str(tmp_path / "strict_store"), seed=3, signal=0.0)  # no signal there: the gate must fail
    yield environments.load_environments(yaml_path), yaml_path
    for var in MLFLOW_VARS:
        monkeypatch.delenv(var, raising=False)


def _register_in_dev(env) -> str:
    from sksurv.linear_model import CoxPHSurvivalAnalysis

    st = FeatureStore(env.store)
    labels, clinical = st.read_table("labels"), st.read_table("clinical")
    y = np.array(list(zip(labels["event"], labels["time_days"])), dtype=[("e", bool), ("t", float)])
    est = CoxPHSurvivalAnalysis().fit(clinical[["x1", "x2"]].to_numpy(), y)
    model = SurvivalPyfunc(est, features=["clinical__x1", "clinical__x2"])
    lineage = Lineage(signature="ENV_TEST", genes_in_set=(), genes_found=(),
                      feature_versions={"labels": "v0001", "clinical": "v0001"}, folds="folds@v0001",
                      folds_hash="f00d", config_hash="cfg1", git_revision="cafe1234", store=env.store,
                      mmray_version="0.1.0")
    reg = Registry(RegistryConfig(tracking_uri=env.mlflow_uris()[0]), store=env.store)
    out = reg.record(Candidate("mmray__env_test", lineage, "fitted", metrics={"harrell_c_mean": 0.7}, model=model))
    assert out.outcome == "registered", out.reason
    return out.name


def test_dev_cannot_write_prod_store_or_registry(envs):
    table, path = envs
    environments.activate(table["dev"], path=path)
    prod = FeatureStore(table["prod"].store)
    with pytest.raises(EnvironmentWriteError, match="'dev' cannot write .* environment 'prod'"):
        prod.write_table("clinical", pd.DataFrame({"patient_id": ["a"], "event_time": [pd.Timestamp.now(tz="UTC")]}))
    with pytest.raises(EnvironmentWriteError, match="mmray promote"):
        prod.record_failures("ingest", [{"item": "x", "patient_id": "a", "reason": "r"}])
    assert prod.versions("clinical") == ["v0001"]  # nothing landed
    with pytest.raises(EnvironmentWriteError, match="MLflow registry"):
        Registry(RegistryConfig(tracking_uri=table["prod"].mlflow_uris()[0]), store=table["dev"].store).record(
            Candidate("x", None, "skipped"))
    FeatureStore(table["dev"].store).write_table("clinical", FeatureStore(table["dev"].store).read_table("clinical"))


def test_cli_env_fills_store_and_refuses_prod(envs, capsys):
    from mmray.cli import main

    _, path = envs
    assert main(["store", "ls", "--env", "dev", "--environments", str(path), str(path.parent / "prod_store")]) == 0
    rc = main(["store", "failures", "--env", "dev", "--environments", str(path), str(path.parent / "dev_store")])
    assert rc == 0 and environments.active()[0] == "dev"


def test_promotion_copies_lineage_and_sets_alias(envs):
    from mlflow import MlflowClient

    from mmray.registry.promote import promote

    table, path = envs
    environments.activate(table["dev"], path=path)
    name = _register_in_dev(table["dev"])
    done = promote(name, source=table["dev"], target=table["prod"])
    assert done.metrics["harrell_c"] > 0.6 and done.metrics["n_patients"] == 120
    tracking, registry = table["prod"].mlflow_uris()
    client = MlflowClient(tracking_uri=tracking, registry_uri=registry)
    mv = client.get_model_version_by_alias(name, "champion")
    tags = mv.tags
    assert json.loads(tags[TAG + "feature_versions"]) == {"labels": "v0001", "clinical": "v0001"}
    assert tags[TAG + "folds"] == "folds@v0001" and tags[TAG + "folds_hash"] == "f00d"
    assert tags[TAG + "git_revision"] == "cafe1234"
    assert json.loads(tags[TAG + "encoder.clinical:v0001"]) == {"encoder_id": "none"}
    assert tags[TAG + "promotion.source_env"] == "dev" and tags[TAG + "promotion.source_version"] == "1"
    # the artifact was copied: prod serves the same predictions as dev
    from mmray.registry.pyfunc import load_pyfunc

    dev_model = load_pyfunc(MlflowClient(*table["dev"].mlflow_uris()).download_artifacts(
        client.get_run(mv.run_id).data.tags[TAG + "promotion.source_run_id"], "model", str(path.parent / "d")))
    prod_model = load_pyfunc(client.download_artifacts(mv.run_id, "model", str(path.parent / "p")))
    x = np.random.default_rng(0).normal(size=(5, 2))
    np.testing.assert_allclose(dev_model.predict_arrays(x)[0], prod_model.predict_arrays(x)[0])
    assert environments.active()[0] == "dev"  # promotion wrote prod as prod, then handed back


def test_failing_gate_is_refused_with_reason(envs):
    from mlflow import MlflowClient

    from mmray.registry.promote import promote

    table, path = envs
    name = _register_in_dev(table["dev"])
    with pytest.raises(PromotionRefused, match=r"'strict' gate failed: harrell_c 0\.\d+ < 0\.6 on 120"):
        promote(f"{name}@1", source=table["dev"], target=table["strict"])
    client = MlflowClient(*table["strict"].mlflow_uris())
    assert client.search_registered_models() == []  # nothing written
