"""Ray Tune: ASHA + Optuna trials scored on the fold mean, every trial in MLflow, the best config refitted."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import ray
from train_testdata import write_tiny_store

from mmray.cli import main
from mmray.config import load_config
from mmray.train.ray_torch import load_checkpoint
from mmray.tune.config import TuneJobConfig
from mmray.tune.tuner import run_tune

# starts Ray (a module fixture): out of `make test-fast`
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_asha_optuna_trials_score_the_fold_mean_log_to_mlflow_and_refit_the_best(tmp_path):
    st, _ = write_tiny_store(tmp_path / "s", n=60, seed=6)
    cfg = load_config(TuneJobConfig, "ray_jobs/configs/tune.yaml", [
        f"store={st.uri}", f"output={tmp_path}/out", f"mlflow.workdir={tmp_path}/mlflow", "modalities=[clinical,expression]",
        "folds.n_folds=3", "search.num_samples=4", "train.max_epochs=4", "train.patience=3", "train.batch_size=32",
        "scheduler.grace_period=1", "scheduler.reduction_factor=2", "refit_executor=local", "n_boot=20",
        ("spaces={early_fusion: {hidden: {kind: choice, choices: [[16], [32, 16]]}, lr: {kind: float, low: 0.001, "
         "high: 0.01, log: true}}}"), "search.train_params=[lr]", "fixed={enc_dim: 16}"])
    rep = run_tune(cfg)
    assert rep.exit_code == 0 and len(rep.trials) == 4
    configs = [json.loads(c) for c in rep.trials["config"]]
    assert all(c["hidden"] in ([16], [32, 16]) and 0.001 <= c["lr"] <= 0.01 and "enc_dim" not in c for c in configs)
    assert len({round(c["lr"], 12) for c in configs}) == 4  # Optuna proposed 4 different configs
    assert (rep.trials["iterations"].between(1, 4)).all()
    assert rep.best_score == pytest.approx(rep.trials["cv_score"].max())

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow/mlflow.db")
    exp = client.get_experiment_by_name("mmray-tune")
    runs = client.search_runs([exp.experiment_id])
    trial_runs = [r for r in runs if r.data.tags.get("mmray.tune_run") == rep.run]
    assert len(trial_runs) == 4
    for r in trial_runs:
        m = r.data.metrics
        assert {"lr", "hidden", "dropout", "modality_dropout"} <= set(r.data.params)
        folds = [m[f"fold{k}_score"] for k in range(3)]
        assert m["cv_score"] == pytest.approx(np.mean(folds))  # each trial is scored on the mean over folds
        hist = client.get_metric_history(r.info.run_id, "cv_score")
        assert 1 <= len(hist) <= 4  # one report per epoch; ASHA may stop a trial early
        arts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"params.json", "progress.csv", "result.json"} <= arts

    # the best config was cross-validated again on the same folds and fitted on every patient
    hp_best = json.loads(rep.trials.sort_values("cv_score").iloc[-1]["config"])
    assert json.loads(json.dumps(rep.best_config)) == hp_best
    refit = rep.refit
    assert refit.exit_code == 0 and len(refit.results) == 3
    assert json.loads(refit.results["hparams"].iloc[0])["hidden"] == list(hp_best["hidden"])
    assert (tmp_path / "out" / "refit_cv" / "results.parquet").exists()
    _, _, spec = load_checkpoint(tmp_path / "out" / "best_model")
    assert spec.lr == pytest.approx(hp_best["lr"]) and spec.hparams["enc_dim"] == 16
    assert (tmp_path / "out" / "best_model" / "preprocess.pkl").exists()
    pre = pd.read_pickle(tmp_path / "out" / "best_model" / "preprocess.pkl")
    assert set(pre.dims) == {"clinical", "expression"}
    best = json.loads((tmp_path / "out" / "best.json").read_text())
    assert best["cv_score"] == pytest.approx(rep.best_score) and best["folds"].startswith("folds@v")
    assert pd.read_parquet(tmp_path / "out" / "trials.parquet").shape[0] == 4


def test_cli_tune_heec_end_to_end(tmp_path, capsys):
    st, _ = write_tiny_store(tmp_path / "s", n=60, seed=7)
    code = main(["tune", "--store", st.uri, "model=heec",  # no YAML: the config's defaults
                 "modalities=[clinical,expression]", f"output={tmp_path}/out", f"mlflow.workdir={tmp_path}/mlflow",
                 "folds.n_folds=3", "search.num_samples=2", "scheduler.grace_period=1", "refit_executor=local",
                 "n_boot=20", "spaces={heec: {num_leaves: {kind: int, low: 3, high: 7}}}",
                 "search.extend_defaults=false", "fixed={n_estimators: 60}"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "2 trial(s), best cv_score=" in out and "refit" in out
    trials = pd.read_parquet(tmp_path / "out" / "trials.parquet")
    assert len(trials) == 2 and trials["cv_score"].between(0, 1).all()
    assert all(set(json.loads(c)) == {"num_leaves"} for c in trials["config"])
    assert (tmp_path / "out" / "best_model" / "model.txt").exists()
    assert pd.read_parquet(tmp_path / "out" / "refit_cv" / "results.parquet")["harrell_c"].notna().all()
