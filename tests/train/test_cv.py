"""Cross-validation runner: saved folds, no label leak end to end, results table, ablation, MLflow, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import ray
from train_testdata import write_tiny_store

from mmray.cli import main
from mmray.config import load_config
from mmray.store import FeatureStore
from mmray.train import data as D
from mmray.train.config import TrainJobConfig
from mmray.train.cv import run_train
from mmray.train.folds import load_or_make_folds

FAST = ["train.executor=local", "lgbm.executor=local", "train.max_epochs=4", "train.patience=3", "n_boot=30",
        "train.batch_size=32"]

# starts Ray (a module fixture): out of `make test-fast`
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _cfg(store, tmp, *extra, mlflow=False) -> TrainJobConfig:
    over = [f"store={store}", f"output={tmp}/out", "folds.n_folds=3", *FAST,
            ("models=[{name: early_fusion, sets: [omics]}, {name: heec, sets: [omics]}, "
             "{name: single, sets: [expression, clinical]}]"),
            "modality_sets={omics: [clinical, expression], expression: [expression], clinical: [clinical]}",
            "preprocess.screen={expression: {max_p: 0.5, top_k: 4}}", f"mlflow.enabled={str(mlflow).lower()}",
            f"mlflow.workdir={tmp}/mlflow", *extra]
    return load_config(TrainJobConfig, None, over)


def test_folds_are_saved_reused_and_never_split_a_patient(tmp_path):
    st, _ = write_tiny_store(tmp_path / "s", n=40)
    labels = st.read_table("labels")
    later = labels.assign(event_time=labels["event_time"] + pd.Timedelta(days=400))  # a 2nd label row per patient
    both = pd.concat([labels, later], ignore_index=True)
    folds, v1 = load_or_make_folds(st, both, 4, 0)
    assert folds.groupby("patient_id")["fold"].nunique().max() == 1
    assert set(folds["patient_id"]) == set(labels["patient_id"]) and sorted(folds["fold"].unique()) == [0, 1, 2, 3]
    again, v2 = load_or_make_folds(st, labels, 4, 0)  # same params, covered patients: reused, nothing written
    assert v2 == v1 and st.versions("folds") == [v1] and again.equals(folds)
    _, v3 = load_or_make_folds(st, labels, 4, 1)  # another seed: a new version
    assert v3 != v1 and st.versions("folds") == [v1, v3]
    assert load_or_make_folds(st, labels, 4, 0)[1] == v1  # the older matching version is still found


def test_cv_predictions_never_see_their_test_fold_labels(tmp_path):
    """Scramble the labels of fold 0's patients: fold 0's held-out predictions must not move (every
    label-dependent step -- screening, Cox/LightGBM fitting, early stopping, Breslow -- saw training rows only),
    while the other folds' predictions (fold 0's patients are in their training rows) do."""
    a, _ = write_tiny_store(tmp_path / "a", n=60, seed=1)
    b, _ = write_tiny_store(tmp_path / "b", n=60, seed=1)
    folds, _ = load_or_make_folds(a, a.read_table("labels"), 3, 0)
    test0 = set(folds.loc[folds["fold"] == 0, "patient_id"])
    lab = b.read_table("labels")  # written, so the folds params name labels v0001 in both stores
    rng = np.random.default_rng(9)
    hit = lab["patient_id"].isin(test0).to_numpy()
    lab.loc[hit, "time_days"] = rng.uniform(5, 3000, hit.sum()).round()
    lab.loc[hit, "event"] = rng.integers(0, 2, hit.sum())
    b.write_table("labels", lab)
    b.set_latest("labels", b.versions("labels")[-1])
    params = dict(a.manifest("folds")["params"], labels_version=b.latest("labels"))
    b.write_table("folds", folds, params=params)

    ra = run_train(_cfg(a.uri, tmp_path / "ra"))
    rb = run_train(_cfg(b.uri, tmp_path / "rb"))
    assert (ra.results["status"] == "ok").all() and (rb.results["status"] == "ok").all()
    key = ["model", "modality_set", "fold", "patient_id"]
    pa_, pb = (r.predictions.sort_values(key).reset_index(drop=True) for r in (ra, rb))
    combos = pa_[["model", "modality_set"]].drop_duplicates().itertuples(index=False)
    for model, mset in combos:
        sa = pa_[(pa_["model"] == model) & (pa_["modality_set"] == mset)]
        sb = pb[(pb["model"] == model) & (pb["modality_set"] == mset)]
        f0a, f0b = sa[sa["fold"] == 0], sb[sb["fold"] == 0]
        assert list(f0a["patient_id"]) == list(f0b["patient_id"]) and set(f0a["patient_id"]) == test0
        np.testing.assert_allclose(f0a["risk"], f0b["risk"], atol=1e-6, err_msg=f"{model} {mset}")
        rest = sa["fold"] != 0
        assert np.abs(sa.loc[rest, "risk"].to_numpy() - sb.loc[rest, "risk"].to_numpy()).max() > 1e-4, model


def test_results_table_summary_ablation_and_mlflow(tmp_path):
    st, _ = write_tiny_store(tmp_path / "s", n=60, seed=2)
    rep = run_train(_cfg(st.uri, tmp_path, mlflow=True))
    out = tmp_path / "out"
    res = pd.read_parquet(out / "results.parquet")
    assert len(res) == 4 * 3 and (res["status"] == "ok").all()
    assert set(res["model"]) == {"early_fusion", "heec", "single"} and set(res["fold"]) == {0, 1, 2}
    for m in ("harrell_c", "uno_c", "td_auc", "ibs"):
        assert res[m].between(0, 1).all(), m
    summ = pd.read_parquet(out / "summary.parquet")
    for _, s in summ.iterrows():
        g = res[(res["model"] == s["model"]) & (res["modality_set"] == s["modality_set"])]
        assert s["harrell_c_mean"] == pytest.approx(g["harrell_c"].mean())
        assert s["harrell_c_sd"] == pytest.approx(g["harrell_c"].std(ddof=1))
        assert s["harrell_c_ci_low"] <= s["harrell_c_mean"] <= s["harrell_c_ci_high"]
    abl = pd.read_csv(out / "ablation.csv")
    merged = abl.merge(summ, on=["model", "modality_set"])
    assert len(merged) == len(summ) == 4
    np.testing.assert_allclose(merged["mean"], merged["harrell_c_mean"])
    np.testing.assert_allclose(merged["sd"], merged["harrell_c_sd"])
    singles = abl[abl["kind"] == "single"]
    best = singles.loc[singles["mean"].idxmax()]
    assert set(abl.loc[abl["kind"] == "fusion", "modality_set"]) == {"omics"}
    np.testing.assert_allclose(abl["delta"], abl["mean"] - best["mean"])
    assert (abl["beats_best_single"] == ((abl["kind"] == "fusion") & (abl["delta"] > 0))).all()
    png = (out / "ablation.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    meta = json.loads((out / "results.json").read_text())
    assert meta["folds"].startswith("folds@v") and len(meta["results"]) == 12 and len(meta["ablation"]) == 4
    assert (out / "predictions.parquet").exists() and (out / "importances.parquet").exists()

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow/mlflow.db")
    exp = client.get_experiment_by_name("mmray-train")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.info.run_id == rep.mlflow_run_id)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == rep.mlflow_run_id]
    assert len(children) == 4 and parent.data.params["n_folds"] == "3"
    for ch in children:
        s = summ[(summ["model"] == ch.data.tags["mmray.model"]) & (summ["modality_set"] ==
                                                                   ch.data.tags["mmray.modality_set"])].iloc[0]
        assert ch.data.metrics["harrell_c_mean"] == pytest.approx(s["harrell_c_mean"])
    arts = {a.path for a in client.list_artifacts(rep.mlflow_run_id)}
    assert {"results.parquet", "ablation.png", "summary.parquet"} <= arts


def test_mil_bags_stream_from_the_store_and_batch_with_collate(tmp_path):
    st, c = write_tiny_store(tmp_path / "s", n=24, seed=4, tile_dim=6)
    pids = c.patient_ids[:8]
    bag_ids = [[f"{p}-S1"] if c.bags[i] is not None and len(c.bags[i]) else [] for i, p in enumerate(pids)]
    cols = {"patient_id": np.asarray(pids, object), "x__clinical": c.features["clinical"][:8],
            "m__clinical": np.ones(8, bool), "time_days": c.time_days[:8], "event": c.event[:8],
            "subtype": c.subtype[:8], "weight": np.ones(8, np.float32),
            "bag_ids": np.asarray(bag_ids + [None], object)[:-1]}
    ds = D.with_tiles(ray.data.from_arrow(D.to_arrow(cols)), {"store": st.uri})
    got = list(D.batches(ds, batch_size=8, modalities=("clinical", "tiles"), dims={"clinical": 3}, bag_dim=6))
    assert len(got) == 1
    batch, w = got[0]
    order = [pids.index(p) for p in batch.patient_ids]
    sizes = np.bincount(batch.bag_index.numpy(), minlength=8)
    for row, i in enumerate(order):
        want = c.bags[i] if c.bags[i] is not None else np.zeros((0, 6))
        assert sizes[row] == len(want)
        np.testing.assert_allclose(batch.bag_feats[batch.bag_index == row].numpy(), want, atol=1e-6)
        assert bool(batch.present("tiles")[row]) == (len(want) > 0)
    assert float(w.sum()) == 8

    rep = run_train(load_config(TrainJobConfig, None, [
        f"store={st.uri}", f"output={tmp_path}/out", "folds.n_folds=2", *FAST, "mlflow.enabled=false",
        "models=[{name: porpoise, sets: [path]}]", "modality_sets={path: [tiles, clinical]}"]))
    assert (rep.results["status"] == "ok").all() and len(rep.results) == 2
    assert rep.results["harrell_c"].between(0, 1).all()
    # per-tile attention of every held-out patient with tiles: all its tiles, at the bag's coordinates
    att = pd.read_parquet(tmp_path / "out" / "attention.parquet")
    n_tiles = {p: len(b) for p, b in zip(c.patient_ids, c.bags) if b is not None and len(b)}
    assert set(att["patient_id"]) == set(rep.predictions["patient_id"]) & set(n_tiles)
    for p, g in att.groupby("patient_id"):
        assert sorted(g["x"]) == [256 * k for k in range(n_tiles[p])] and (g["size_l0"] == 256).all()
    np.testing.assert_allclose(att.groupby("patient_id")["attention"].sum(), 1.0, rtol=1e-5)


def test_cli_train_writes_the_results_table(tmp_path, capsys):
    st, _ = write_tiny_store(tmp_path / "s", n=40, seed=3)
    code = main(["train", "--config", "ray_jobs/configs/train.yaml", "--store", st.uri, f"output={tmp_path}/out",
                 "run_name=cli", "folds.n_folds=2", *FAST, "mlflow.enabled=false", "tasks=[survival_cox,subtype]",
                 "models=[{name: single, sets: [clinical]}, {name: heec, sets: [clinical]}]"])
    assert code == 0
    text = capsys.readouterr().out
    assert "run cli: 8 fold fit(s), 0 failed" in text and "heec" in text
    res = pd.read_parquet(tmp_path / "out" / "results.parquet")
    surv, sub = res[res["task"] == "survival_cox"], res[res["task"] == "subtype"]
    assert len(surv) == len(sub) == 4 and surv["harrell_c"].notna().all()
    assert sub["auc"].between(0, 1).all() and sub["balanced_accuracy"].between(0, 1).all()
    summ = pd.read_parquet(tmp_path / "out" / "summary.parquet").set_index(["task", "model"])
    for model in ("single", "heec"):
        s = summ.loc[("subtype", model)]
        assert s["auc_ci_low"] <= s["auc_mean"] <= s["auc_ci_high"]
    assert FeatureStore(st.uri).versions("folds")  # folds saved in the store
    assert main(["train", "--store", st.uri, "tasks=[nope]"]) == 1
