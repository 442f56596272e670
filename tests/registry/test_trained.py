"""Tuned models (mmray tune's refitted best) gated, registered with lineage, loaded back and served over HTTP."""

from __future__ import annotations

import json
import pickle
import shutil

import mlflow
import numpy as np
import pandas as pd
import pytest
import ray
from mlflow import MlflowClient
from ray import serve
from train_testdata import write_tiny_store

from mmray.cli import main
from mmray.config import load_config
from mmray.errors import DataError
from mmray.registry.config import GateConfig, RegistryConfig
from mmray.registry.trained import register_tuned
from mmray.serve import MmrayClient, ServeError
from mmray.serve.app import start_serve
from mmray.serve.config import ServeConfig
from mmray.store import FeatureStore
from mmray.store.manifest import git_revision
from mmray.train.cv import load_job_data, task_rows
from mmray.train.data import prepared_columns
from mmray.train.metrics import BreslowSurvival
from mmray.train.preprocess import ModalityLayout
from mmray.train.ray_torch import load_checkpoint, predict_columns
from mmray.train.signature_data import folds_hash
from mmray.tune.config import TuneJobConfig
from mmray.tune.tuner import run_tune, train_config

pytestmark = pytest.mark.integration
MODALITIES = "[clinical,expression,radiomics]"
TUNES = {
    "early_fusion": ["train.max_epochs=3", "train.patience=3", "fixed={enc_dim: 8, hidden: [8]}",
                     "search.train_params=[lr]", "preprocess.screen={expression: {max_p: 0.5, top_k: 6}}"],
    "heec": ["fixed={n_estimators: 40}", "search.extend_defaults=false",
             "spaces={heec: {num_leaves: {kind: int, low: 3, high: 5}}}"],
    "ensemble": ["fixed={members: [coxph_ridge, coxph_ridge@clinical, coxph_ridge@expression]}",
                 "search.extend_defaults=false", "spaces={ensemble: {meta_alpha: {kind: float, low: 0.1, high: 10}}}",
                 "preprocess.screen={expression: {max_p: 0.5, top_k: 6}}"],
}
TIMES = [365.0, 730.0, 1095.0, 1825.0]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny store and two small tune runs (torch early fusion, LightGBM HEEC) under <store>/_results/."""
    root = tmp_path_factory.mktemp("trained")
    st, _ = write_tiny_store(root / "s", n=60, seed=6)
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("MMRAY_SERVE_TOKEN", raising=False)
    ray.init(num_cpus=2, object_store_memory=1_500_000_000, include_dashboard=False, log_to_driver=False)
    try:
        out = {"store": st.uri, "root": root, "cfg": {}}
        for model, extra in TUNES.items():
            cfg = load_config(TuneJobConfig, None, [
                f"store={st.uri}", f"model={model}", f"run_name=tune-{model}", f"modalities={MODALITIES}",
                "folds.n_folds=3", "search.num_samples=2", "search.algorithm=random", "scheduler.grace_period=1",
                "refit_executor=local", "lgbm.executor=local", "n_boot=0", "mlflow.enabled=false", *extra])
            assert run_tune(cfg).exit_code == 0
            out["cfg"][model] = cfg
        uri = f"sqlite:///{st.uri}/_mlflow/mlflow.db"
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        out["client"] = MlflowClient(uri, registry_uri=uri)
        yield out
    finally:
        serve.shutdown()
        ray.shutdown()
        mp.undo()


def _output(env, model: str):
    return env["root"] / "s" / "_results" / f"tune-{model}"


@pytest.fixture(scope="module")
def table(env) -> pd.DataFrame:
    """The rows fit_best trained on, rebuilt with the tuner's own code."""
    cfg = env["cfg"]["early_fusion"]
    base = train_config(cfg, hparams={}, train={}, executor="local", output=None, run_name="ref")
    data = load_job_data(base, FeatureStore(env["store"]), ModalityLayout())
    return task_rows(data.table, cfg.task)


@pytest.fixture(scope="module")
def registered(env):
    lenient = RegistryConfig(gate=GateConfig(threshold=0.0))  # the 3-epoch torch model: test wrapping, not skill
    return {"early_fusion": register_tuned(str(_output(env, "early_fusion")), store=env["store"], registry=lenient,
                                           name="mmray__early_fusion"),
            "heec": register_tuned("tune-heec", store=env["store"], registry=RegistryConfig(), name="mmray__heec"),
            "ensemble": register_tuned("tune-ensemble", store=env["store"], registry=lenient,
                                       name="mmray__ensemble")}


def _reference(env, model: str, table: pd.DataFrame) -> np.ndarray:
    """Risk of the refitted best model + its preprocessing, computed in this process by the training code."""
    best = _output(env, model) / "best_model"
    if model == "ensemble":  # the stacked classical members, straight from the pickle fit_best wrote
        return pickle.loads((best / "classic.pkl").read_bytes()).predict(table)
    if model == "heec":
        heec = pickle.loads((best / "heec.pkl").read_bytes())
        return heec.predict(table[json.loads((best / "columns.json").read_text())])
    net, _, _ = load_checkpoint(best)
    pre = pickle.loads((best / "preprocess.pkl").read_bytes())
    return predict_columns(net, prepared_columns(pre.transform(table)), dims=pre.dims).output.reshape(-1)


@pytest.mark.parametrize("model", ["early_fusion", "heec", "ensemble"])
def test_registered_champion_predicts_what_the_refitted_model_gives(env, registered, table, model):
    out = registered[model]
    assert out.outcome == "registered" and out.champion and out.version == "1", out
    loaded = mlflow.pyfunc.load_model(f"models:/mmray__{model}@champion")
    inner = loaded.unwrap_python_model()
    assert not (table["has_radiomics"].all() and table["has_expression"].all())  # some modalities are missing
    pred = loaded.predict(table)  # training-table rows as they are: bool flags, NaN for missing groups
    want = _reference(env, model, table)
    np.testing.assert_allclose(pred["risk"].to_numpy(), want, rtol=1e-6, atol=1e-6)
    times = [t for t in TIMES if t < table["time_days"].max()]
    assert list(inner.times_days) == times
    surv = BreslowSurvival().fit(want, time_days=table["time_days"].to_numpy(float),
                                 event=table["event"].astype(bool).to_numpy()).survival(want, times)
    np.testing.assert_allclose(pred[[f"surv_{t:g}d" for t in times]].to_numpy(), surv, rtol=1e-6, atol=1e-9)
    # features by training-table name: only what the fitted model uses, plus the has_<group> flags
    feats = inner.features
    assert {"has_clinical", "has_expression", "has_radiomics"} <= set(feats)
    assert all(f.startswith(("clinical__", "expression__", "radiomics__", "has_")) for f in feats)
    if model == "early_fusion":
        pre = pickle.loads((_output(env, model) / "best_model" / "preprocess.pkl").read_bytes())
        assert [f for f in feats if f.startswith("expression__")] == pre.blocks_["expression"].feature_names_
        assert 0 < len(pre.blocks_["expression"].feature_names_) < 10  # the label screen dropped genes


def test_lineage_tags_params_and_metrics(env, registered):
    out, client = registered["early_fusion"], env["client"]
    refit = json.loads((_output(env, "early_fusion") / "refit_cv" / "results.json").read_text())
    summary = pd.read_parquet(_output(env, "early_fusion") / "refit_cv" / "summary.parquet").iloc[0]
    run = client.get_run(out.run_id)
    tags, params = run.data.tags, run.data.params
    store = FeatureStore(env["store"])
    assert json.loads(tags["mmray.feature_versions"]) == refit["feature_versions"]
    assert set(refit["feature_versions"]) == {"labels", "clinical", "expression", "radiomics"}
    assert tags["mmray.feature_version.expression"] == refit["feature_versions"]["expression"]
    assert tags["mmray.folds"] == refit["folds"] == "folds@v0001"
    assert tags["mmray.folds_hash"] == folds_hash(store.read_table("folds", version="v0001"))
    assert tags["mmray.config_hash"] == refit["config_hash"]
    assert tags["mmray.git_revision"] == (git_revision() or "unknown")
    assert tags["mmray.tune_run"] == "tune-early_fusion" and tags["mmray.model"] == "early_fusion"
    assert tags["mmray.store"] == store.uri and len(tags["mmray.model_hash"]) == 16
    assert tags["mmray.gate"] == "passed" and tags["mmray.outcome"] == "registered"
    assert run.data.metrics["harrell_c_mean"] == pytest.approx(summary["harrell_c_mean"])
    assert params["hp.enc_dim"] == "8" and params["modalities"] == "clinical,expression,radiomics"
    assert int(params["n_patients"]) == 60 and "train.lr" in params
    mv = client.get_model_version("mmray__early_fusion", out.version)
    inner = mlflow.pyfunc.load_model("models:/mmray__early_fusion/1").unwrap_python_model()
    assert json.loads(mv.tags["mmray.features"]) == inner.features
    assert json.loads(mv.tags["mmray.metrics"])["harrell_c_mean"] == pytest.approx(summary["harrell_c_mean"])
    assert mv.tags["mmray.data_key"] == tags["mmray.data_key"] and mv.run_id == out.run_id
    rm = client.get_registered_model("mmray__early_fusion")
    assert rm.tags["mmray.kind"] == "tuned" and {k: str(v) for k, v in rm.aliases.items()} == {"champion": "1"}
    assert client.get_experiment(run.info.experiment_id).name == "mmray-models"


def test_registering_the_same_run_again_is_resumed(env, registered):
    again = register_tuned("tune-heec", store=env["store"], registry=RegistryConfig(), name="mmray__heec")
    assert again.resumed and again.outcome == "registered" and again.version == registered["heec"].version
    assert len(env["client"].search_model_versions("name = 'mmray__heec'")) == 1


def test_failing_gate_logs_the_reason_and_registers_nothing(env, registered):
    strict = RegistryConfig(gate=GateConfig(threshold=0.99))
    out = register_tuned(str(_output(env, "heec")), store=env["store"], registry=strict, name="mmray__heec_strict")
    value = registered["heec"].metrics["harrell_c_mean"]
    assert out.outcome == "gate_failed" and out.version is None and not out.champion
    assert out.reason == f"harrell_c_mean {value:.3f} < 0.99"
    tags = env["client"].get_run(out.run_id).data.tags
    assert tags["mmray.gate"] == "failed" and tags["mmray.gate_reason"] == out.reason
    assert env["client"].search_registered_models("name = 'mmray__heec_strict'") == []


def test_models_on_tile_bags_are_refused_with_the_reason(env, tmp_path):
    src = _output(env, "heec")
    fake = tmp_path / "tune-porpoise"
    shutil.copytree(src, fake, ignore=shutil.ignore_patterns("tune"))
    best = json.loads((fake / "best.json").read_text())
    (fake / "best.json").write_text(json.dumps({**best, "model": "porpoise", "modalities": ["expression", "tiles"]}))
    out = register_tuned(str(fake), store=env["store"], registry=RegistryConfig(), name="mmray__porpoise")
    assert out.outcome == "skipped" and "tile bags" in out.reason and out.version is None
    assert env["client"].search_registered_models("name = 'mmray__porpoise'") == []


def test_bad_tune_output_names_the_path_and_how_to_make_one(env, tmp_path):
    with pytest.raises(DataError, match=r"no tune run at .*nowhere.*mmray tune --store"):
        register_tuned(str(tmp_path / "nowhere"), store=env["store"], registry=RegistryConfig(), name="x")
    partial = tmp_path / "partial"
    shutil.copytree(_output(env, "heec"), partial, ignore=shutil.ignore_patterns("tune", "refit_cv"))
    with pytest.raises(DataError, match=r"has no refit_cv/summary.parquet.*refit=true"):
        register_tuned(str(partial), store=env["store"], registry=RegistryConfig(), name="x")


def test_cli_register_by_run_name(env, capsys):
    code = main(["register", "--store", env["store"], "--tune-run", "tune-heec", "--name", "mmray__cli_heec",
                 "registry.gate.threshold=0.5"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "mmray__cli_heec: registered mmray__cli_heec v1 (champion)" in out and "harrell_c_mean=" in out


@pytest.fixture(scope="module")
def client(env, registered, free_ports):
    cfg = load_config(ServeConfig, None, [f"store={env['store']}", f"port={free_ports(1)[0]}", "replica_num_cpus=0.5",
                                          "model_prefix=mmray__"])
    with MmrayClient(start_serve(cfg)) as c:
        yield c


def _instance(row: pd.Series, features: list[str]) -> dict:
    """A JSON instance by feature name; a missing group is sent as has_<group>=0 with zeros (no NaN in JSON)."""
    return {f: (float(row[f]) if pd.notna(row[f]) else 0.0) for f in features}


@pytest.mark.parametrize("model", ["early_fusion", "heec", "ensemble"])
def test_served_over_http_by_feature_name(env, registered, table, client, model):
    name = f"mmray__{model}"
    listed = {m["name"]: m for m in client.models()}
    inner = mlflow.pyfunc.load_model(f"models:/{name}@champion").unwrap_python_model()
    assert listed[name]["features"] == inner.features and listed[name]["version"] == "1"
    rows = pd.concat([table[table["has_radiomics"] & table["has_expression"]].head(3),
                      table[~table["has_radiomics"]].head(1)])
    assert len(rows) == 4
    got = client.predict(name, [_instance(r, inner.features) for _, r in rows.iterrows()])
    want = _reference(env, model, rows)  # the last row's radiomics are NaN here, zeros over HTTP
    np.testing.assert_allclose(got["risk"], want, rtol=1e-6, atol=1e-6)
    assert got["survival"]["times_days"] == list(inner.times_days)
    assert np.asarray(got["survival"]["probabilities"]).shape == (4, len(inner.times_days))
    gone = next(f for f in inner.features if f.startswith("expression__"))
    bad = {k: v for k, v in _instance(rows.iloc[0], inner.features).items() if k != gone}
    with pytest.raises(ServeError) as e:
        client.predict(name, [bad])
    assert e.value.status == 422 and e.value.body["missing_features"] == [gone]
