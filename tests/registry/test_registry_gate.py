"""Gate, lineage and champion rules of the MLflow registry (sqlite in a temp folder, no Ray)."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest

from mmray.registry.config import GateConfig, RegistryConfig, resolve_tracking
from mmray.registry.gate import check_gate
from mmray.registry.lineage import Lineage, model_name
from mmray.registry.pyfunc import SurvivalPyfunc, fast_reload_path, load_pyfunc, model_signature, reload_pyfunc
from mmray.registry.registry import Candidate, Registry
from mmray.train.signatures import CoxModelConfig, fit_estimator, survival_grid


# ---------------------------------------------------------------- pure rules
def test_gate_passes_fails_and_explains():
    cfg = GateConfig(metric="harrell_c_mean", threshold=0.55)
    ok = check_gate({"harrell_c_mean": 0.61}, cfg)
    assert ok.passed and ok.reason == "harrell_c_mean 0.610 >= 0.55"
    bad = check_gate({"harrell_c_mean": 0.52}, cfg)
    assert not bad.passed and bad.reason == "harrell_c_mean 0.520 < 0.55"
    missing = check_gate({"uno_c_mean": 0.7}, cfg)
    assert not missing.passed and "missing" in missing.reason and "uno_c_mean" in missing.reason
    assert not check_gate({"harrell_c_mean": float("nan")}, cfg).passed
    lower = check_gate({"ibs": 0.18}, GateConfig(metric="ibs", threshold=0.2, higher_is_better=False))
    assert lower.passed and "<=" in lower.reason


def test_gate_can_require_the_bootstrap_lower_bound():
    cfg = GateConfig(threshold=0.55, require_ci_low=0.5)
    assert check_gate({"harrell_c_mean": 0.6, "harrell_c_oof_low": 0.53}, cfg).passed
    low = check_gate({"harrell_c_mean": 0.6, "harrell_c_oof_low": 0.47}, cfg)
    assert not low.passed and "harrell_c_oof_low 0.470 < 0.5" in low.reason
    assert not check_gate({"harrell_c_mean": 0.6}, cfg).passed  # bootstrap off: cannot pass


def test_model_names_are_sanitised_and_bounded():
    assert model_name("SIG_PROLIFERATION") == "sig__SIG_PROLIFERATION"
    assert model_name("HALLMARK E2F/TARGETS (v7)") == "sig__HALLMARK_E2F_TARGETS__v7_"
    long = model_name("X" * 400)
    assert len(long) == 200 and long != model_name("X" * 399)


def test_tracking_location_rules(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri, art = resolve_tracking(RegistryConfig(), store=str(tmp_path / "store"))
    assert uri == f"sqlite:///{tmp_path}/store/_mlflow/mlflow.db"
    assert art == (tmp_path / "store" / "_mlflow" / "mlartifacts").as_uri()
    assert resolve_tracking(RegistryConfig(workdir=str(tmp_path / "w")))[0] == f"sqlite:///{tmp_path}/w/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert resolve_tracking(RegistryConfig(), store=str(tmp_path))[0] == "http://mlflow.example:5000"
    assert resolve_tracking(RegistryConfig(tracking_uri="sqlite:///x.db"))[0] == "sqlite:///x.db"


# ---------------------------------------------------------------- with MLflow
GENES = ["MKI67", "TOP2A", "CD8A", "GZMB"]


@pytest.fixture(scope="module")
def fitted():
    """A coxnet pipeline on seeded data where MKI67 is harmful and CD8A protective."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, len(GENES)))
    t = rng.exponential(1000 * np.exp(-(0.8 * x[:, 0] - 0.8 * x[:, 2]))) + 1
    e = rng.random(80) < 0.7
    est = fit_estimator(CoxModelConfig(), x, t, e)
    times = survival_grid((365, 730), train_time_days=t)
    return SurvivalPyfunc(est, features=GENES, times_days=times, reference_x=x), x


def test_cached_reference_curve_equals_the_estimators_survival(fitted):
    model, x = fitted
    assert model._ph is not None  # a Cox model: proportional hazards hold
    risk, surv = model.predict_arrays(x[:20])
    want = np.vstack([f(model.times_days) for f in model.estimator.predict_survival_function(x[:20])])
    np.testing.assert_allclose(surv, want, rtol=0, atol=1e-9)
    np.testing.assert_allclose(risk, model.estimator.predict(x[:20]))
    slow = SurvivalPyfunc(model.estimator, features=GENES, times_days=model.times_days)
    np.testing.assert_allclose(slow.predict_arrays(x[:20])[1], surv, rtol=0, atol=1e-9)


class _Squares:
    """A non-linear risk model: the affine shortcut must not apply."""

    def predict(self, x):
        return np.asarray(x, dtype=float) @ np.arange(1.0, x.shape[1] + 1) + 0.1 * np.asarray(x)[:, 0] ** 2


def test_affine_risk_shortcut_equals_the_pipeline_and_only_when_it_holds(fitted):
    model, x = fitted
    assert model._affine is not None  # imputer -> scaler -> Cox: affine in finite inputs
    rng = np.random.default_rng(5)
    rows = rng.normal(0, 3, size=(9, len(GENES)))
    np.testing.assert_allclose(model.predict_arrays(rows)[0], model.estimator.predict(rows), rtol=1e-12, atol=1e-12)
    with_nan = rows.copy()
    with_nan[0, 1] = np.nan  # imputation is not affine: the pipeline itself answers
    np.testing.assert_array_equal(model.predict_arrays(with_nan)[0], model.estimator.predict(with_nan))
    assert SurvivalPyfunc(_Squares(), features=GENES, reference_x=x)._affine is None


def test_fast_reload_equals_mlflows_loader_and_declines_what_it_cannot_reload(fitted, tmp_path):
    """A serving replica reloads an evicted model by unpickling its local copy: same predictions as
    MLflow's loader; a folder with code paths or another cloudpickle version goes back to MLflow."""
    model, x = fitted
    folder = str(tmp_path / "model")
    mlflow.pyfunc.save_model(folder, python_model=model, signature=model_signature(model),
                             pip_requirements=list(model.pip_requirements))
    path = fast_reload_path(folder)
    assert path is not None and path.endswith(".pkl")
    fast, slow = reload_pyfunc(path), load_pyfunc(folder)
    assert fast.features == slow.features == GENES
    (r1, s1), (r2, s2) = fast.predict_arrays(x[:7]), slow.predict_arrays(x[:7])
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_array_equal(s1, s2)
    mlmodel = tmp_path / "model" / "MLmodel"
    text = mlmodel.read_text()
    mlmodel.write_text(text.replace("cloudpickle_version: ", "cloudpickle_version: 0.0.1-"))
    assert fast_reload_path(folder) is None
    mlmodel.write_text(text.replace("code: null", "code: code"))
    assert fast_reload_path(folder) is None


def _lineage(signature="SIG_TEST", *, labels="v0001", folds="folds@v0001") -> Lineage:
    return Lineage(signature=signature, genes_in_set=(*GENES, "OFFPLATFORM1"), genes_found=tuple(GENES),
                   feature_versions={"labels": labels, "expression": "v0003"}, folds=folds,
                   folds_hash="abc123", config_hash="cfg0001", git_revision="deadbeef", store="/data/store",
                   mmray_version="0.1.0")


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """One sqlite registry for the module (creating one takes seconds); tests use distinct model names."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        reg = Registry(RegistryConfig(workdir=str(tmp_path_factory.mktemp("mlflow")),
                                      gate=GateConfig(threshold=0.55)))
        reg.activate()
        yield reg


def _metrics(c: float) -> dict[str, float]:
    return {"harrell_c_fold0": c - 0.02, "harrell_c_fold1": c + 0.02, "harrell_c_mean": c, "harrell_c_sd": 0.028}


def test_passing_model_is_registered_with_complete_lineage(registry, fitted):
    model, x = fitted
    out = registry.record(Candidate("sig__SIG_TEST", _lineage(), "fitted", metrics=_metrics(0.64),
                                    params={"model.kind": "coxnet"}, model=model))
    assert (out.outcome, out.version, out.champion) == ("registered", "1", True)
    mv = registry.client.get_model_version_by_alias("sig__SIG_TEST", "champion")
    tags = mv.tags
    assert json.loads(tags["mmray.feature_versions"]) == {"labels": "v0001", "expression": "v0003"}
    assert tags["mmray.folds"] == "folds@v0001" and tags["mmray.folds_hash"] == "abc123"
    assert tags["mmray.config_hash"] == "cfg0001" and tags["mmray.git_revision"] == "deadbeef"
    assert tags["mmray.signature"] == "SIG_TEST" and tags["mmray.signature.genes"] == ",".join(GENES)
    assert tags["mmray.signature.genes_missing"] == "OFFPLATFORM1"
    assert json.loads(tags["mmray.features"]) == GENES
    assert json.loads(tags["mmray.metrics"])["harrell_c_fold1"] == pytest.approx(0.66)
    assert tags["mmray.gate"] == "passed" and "0.640 >= 0.55" in tags["mmray.gate_reason"]
    assert tags["mmray.data_key"] == _lineage().data_key
    run = registry.client.get_run(out.run_id)
    assert run.data.metrics["harrell_c_fold0"] == pytest.approx(0.62)
    assert run.data.params["model.kind"] == "coxnet"
    assert run.data.tags["mmray.outcome"] == "registered" and run.info.status == "FINISHED"
    # the registered pyfunc predicts what the in-memory model predicts, with the signature stored
    loaded = mlflow.pyfunc.load_model("models:/sig__SIG_TEST@champion")
    assert loaded.metadata.get_input_schema().input_names() == GENES
    frame = pd.DataFrame(x[:5], columns=GENES)
    got = loaded.predict(frame)
    want = model.predict(None, frame)
    assert list(got.columns) == ["risk", "surv_365d", "surv_730d"]
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=1e-12)
    assert np.all(np.diff(got[["surv_365d", "surv_730d"]].to_numpy(), axis=1) <= 0)  # survival falls
    assert load_pyfunc("models:/sig__SIG_TEST/1").features == GENES


def test_failing_model_is_logged_with_reason_and_not_registered(registry, fitted):
    model, _ = fitted
    out = registry.record(Candidate("sig__SIG_WEAK", _lineage("SIG_WEAK"), "fitted", metrics=_metrics(0.51),
                                    model=model))
    assert out.outcome == "gate_failed" and out.version is None
    run = registry.client.get_run(out.run_id)
    assert run.data.tags["mmray.gate"] == "failed"
    assert run.data.tags["mmray.gate_reason"] == "harrell_c_mean 0.510 < 0.55"
    assert run.data.tags["mmray.config_hash"] == "cfg0001"  # lineage is logged for failures too
    assert registry.client.search_registered_models(filter_string="name = 'sig__SIG_WEAK'") == []
    assert registry.champion("sig__SIG_WEAK") is None
    assert not registry.client.list_artifacts(out.run_id)  # no model logged


def test_skipped_and_errored_candidates(registry):
    skipped = registry.record(Candidate("sig__TINY", _lineage("TINY"), "skipped", reason="only 1 of 9 genes"))
    assert registry.client.get_run(skipped.run_id).data.tags["mmray.gate"] == "skipped"
    err = registry.record(Candidate("sig__BROKEN", _lineage("BROKEN"), "error", reason="DataError: boom"))
    run = registry.client.get_run(err.run_id)
    assert run.info.status == "FAILED" and run.data.tags["mmray.error"] == "DataError: boom"
    # resume sees the skipped run (FINISHED) but not the failed one (retried next time)
    lin = _lineage()
    done = registry.finished_runs(config_hash=lin.config_hash, data_key=lin.data_key)
    assert "TINY" in done and "BROKEN" not in done


def test_champion_rule_best_on_same_data_replace_on_new_data(registry, fitted):
    model, _ = fitted
    rec = lambda c, lin: registry.record(Candidate("sig__SIG_CHAMP", lin, "fitted", metrics=_metrics(c),
                                                   model=model))
    first = rec(0.62, _lineage())
    worse = rec(0.58, _lineage())  # same data, lower C: registered but v1 stays champion
    assert (worse.version, worse.champion) == ("2", False)
    assert str(registry.champion("sig__SIG_CHAMP").version) == first.version == "1"
    mv2 = registry.client.get_model_version("sig__SIG_CHAMP", "2")
    assert mv2.tags["mmray.champion_decision"].startswith("v1 stays champion")
    better = rec(0.70, _lineage())
    assert better.champion and str(registry.champion("sig__SIG_CHAMP").version) == "3"
    newdata = rec(0.60, _lineage(labels="v0002"))  # other labels version: replaces even though lower
    assert newdata.champion and str(registry.champion("sig__SIG_CHAMP").version) == "4"
    listed = registry.servable(prefix="sig__SIG_C")
    assert [(m.name, m.version) for m in listed] == [("sig__SIG_CHAMP", "4")]
    assert listed[0].features == GENES and listed[0].metrics["harrell_c_mean"] == pytest.approx(0.60)
