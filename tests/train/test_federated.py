"""Federated training on Ray: what crosses from the sites, drop-outs, a killed site actor, MLflow, the registry."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from federated_testdata import write_site_stores

from mmray.config import load_config
from mmray.train.federated import run_federated, start_sites
from mmray.train.federated_config import FederatedConfig

# Ray, three table ingests and three site actors: over the ~30 s of `make test`, so CI's `make test-e2e` runs it
pytestmark = [pytest.mark.integration, pytest.mark.e2e]

CONFIG = "ray_jobs/configs/federated.yaml"


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return write_site_stores(tmp_path_factory.mktemp("fed"), patients=80, seed=5)


@pytest.fixture(scope="module")
def ray_sites(stores, tmp_path_factory):
    """Ray with every site's resource, and the site actors (started once: tss05 drops out of round 1)."""
    import ray

    ray.init(num_cpus=2, resources={f"site_{n}": 1 for n in stores}, include_dashboard=False,
             log_to_driver=False)
    yield start_sites(_cfg(stores, tmp_path_factory.mktemp("coord")))
    ray.shutdown()


def _cfg(stores, tmp_path, *extra) -> FederatedConfig:
    ov = [f"sites.{n}.store={s}" for n, s in stores.items()] + [f"sites.{n}.cpus=0.25" for n in stores]
    ov += [f"store={tmp_path / 'coordinator'}", "folds.n_folds=2", "rounds=4", "patience=4", "local_epochs=1",
           "failures.round_timeout_s=120", "register.registry.gate.threshold=0.0", "failures.drop.tss05=[1]", *extra]
    return load_config(FederatedConfig, CONFIG, ov)


def _identifiers(stores) -> set[str]:
    from mmray.store import FeatureStore

    return {str(p) for s in stores.values() for p in FeatureStore(s).read_table("labels")["patient_id"]}


def test_only_weights_statistics_and_scalars_cross(stores, ray_sites, tmp_path):
    """Every answer a site sent, recorded at the coordinator: its types, shapes and that no row or id is in it.

    The same run has one site drop out of round 1 of every fit: training goes on, and the drop is recorded.
    """
    received = []
    ray_sites.on_receive = lambda site, method, answer: received.append((site, method, answer))
    report = run_federated(_cfg(stores, tmp_path), sites=ray_sites)
    ray_sites.on_receive = None
    ids = _identifiers(stores)
    methods = {m for _, m, _ in received}
    assert {"prep_schema", "prep_moments", "prep_counts", "prep_cox", "time_moments", "time_counts", "train_round",
            "evaluate", "lineage", "check_model"} <= methods
    shapes = [{k: tuple(v.shape) for k, v in f.spec.build().state_dict().items()}
              for f in report.fits + [report.final]]
    n_rows = {s: json.loads(json.dumps(report.sites[s]))["n_patients"] for s in report.sites}
    for site, method, answer in received:
        blob = pickle.dumps(answer)
        assert not any(p.encode() in blob for p in ids), f"{site}.{method} sent a patient id"
        assert not isinstance(answer, (pd.DataFrame, pd.Series))
        if method == "train_round":
            assert set(answer) == {"state", "n_examples", "loss", "seconds"}
            assert {k: tuple(v.shape) for k, v in answer["state"].items()} in shapes  # weights, nothing else
            assert all(isinstance(v, torch.Tensor) for v in answer["state"].values())
            assert isinstance(answer["n_examples"], int) and isinstance(answer["loss"], float)
        elif method == "evaluate":
            for split in answer.values():
                assert set(split) == {"n", "n_events", "concordant", "discordant", "tied_risk", "c"}
                assert all(np.isscalar(v) for v in split.values())
        elif method == "prep_moments":
            for mom in answer.values():  # per modality: one number per column, whatever the row count
                d = {v.shape for v in mom.values()}
                assert len(d) == 1 and len(next(iter(d))) == 1
        elif method == "time_moments":
            assert {v.shape for v in answer.values()} == {(2,)}
        elif method in ("prep_counts", "time_counts"):
            assert answer.ndim == 2 and answer.dtype.kind == "i"
        elif method == "prep_cox":
            for parts in answer.values():
                assert set(parts) == {"u", "i"} and parts["u"].shape == parts["i"].shape
        elif method == "prep_schema":
            for m in answer["modalities"].values():
                assert set(m) == {"columns", "text", "n"}
                assert all(isinstance(c, int) for lev in m["text"].values() for c in lev.values())
        elif method == "check_model":
            assert set(answer) == {"max_abs_diff", "n"}
        # no array anywhere is as long as a site's row count unless it is a per-column one (checked above)
        assert site in n_rows
    rounds = report.rounds
    drops = rounds[rounds["round"] == 1]
    assert (drops["n_dropped"] == 1).all() and drops["dropped"].str.contains("tss05").all()
    assert drops["updated"].all() and (rounds.groupby("fold")["round"].max() >= 2).all()  # training went on
    assert np.isfinite(report.summary["harrell_c_mean"])
    assert set(report.summary["site_c_mean"]) == set(stores)
    # results, MLflow per-round metrics, the registered model with per-site lineage
    meta = json.loads((tmp_path / "coordinator" / "_results" / report.run / "federated.json").read_text())
    assert meta["sites"]["tss05"]["n_patients"] == report.sites["tss05"]["n_patients"]
    from mlflow import MlflowClient

    from mmray.registry.config import RegistryConfig, resolve_tracking

    tracking, _ = resolve_tracking(RegistryConfig(), store=str(tmp_path / "coordinator"))
    client = MlflowClient(tracking_uri=tracking)
    hist = client.get_metric_history(report.mlflow_run_id, "fold0.c_pooled_test")
    assert [m.step for m in hist] == list(range(len(hist))) and len(hist) >= 3
    for site in stores:
        assert client.get_metric_history(report.mlflow_run_id, f"fold0.c_site_{site}_test")
    reg = report.registration
    assert reg["outcome"] == "registered", reg
    mv = client.get_model_version(reg["name"], reg["version"])
    assert mv.tags["mmray.kind"] == "federated"
    for s in stores:
        assert mv.tags[f"mmray.site.{s}.store"] == stores[s]
        assert json.loads(mv.tags[f"mmray.site.{s}.feature_versions"])["labels"]


@pytest.mark.drill
def test_a_killed_site_actor_does_not_stop_training(stores, ray_sites, tmp_path):
    """One site's actor is killed for good, another killed and restarted by Ray, both mid-training."""
    import time

    import ray

    from mmray.train.federated_rounds import fit_fold

    cfg = _cfg(stores, tmp_path, "rounds=5", "patience=5", "final_fit=false")
    sites = ray_sites
    dead, restarted = sorted(s for s in stores if s != "tss05")  # tss05 (the largest code) has its drill

    def kill(row):
        if row["round"] == 1:
            ray.kill(sites.actors[dead], no_restart=True)
            ray.kill(sites.actors[restarted], no_restart=False)
        if row["round"] == 2:  # give Ray time to restart the actor (it reloads its store) before round 3
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                try:
                    ray.get(sites.actors[restarted].ping.remote(), timeout=30)
                    return
                except Exception:  # noqa: BLE001  still restarting
                    time.sleep(1)
    fit = fit_fold(sites, cfg, fold=0, on_round=kill)
    rounds = {r["round"]: r for r in fit.rounds}
    assert max(rounds) == 4  # every round ran
    assert all(dead in rounds[r]["dropped"] for r in (2, 3, 4))
    assert "RayActorError" in rounds[2]["dropped"][dead] or "died" in rounds[2]["dropped"][dead].lower()
    assert restarted in rounds[3]["trained"] and restarted in rounds[4]["trained"]  # back after Ray restarted it
    assert all(rounds[r]["updated"] for r in rounds)
    assert np.isfinite(rounds[4]["c_pooled_val"])
