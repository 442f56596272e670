"""``mmray pretrain`` on a small slide cohort: DINO on Ray Train, the exported and registered encoder, the
embedding with it, the 4096 level, the HIPT model on its regions, and a rerun that resumes.

Training runs: marked ``e2e`` (``make test-e2e``).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import ray
import torch
from slide_cohort import small_slide_cohort

from mmray.config import load_config
from mmray.features.encoders import EncoderConfig, EncoderSpec, build_model, resolve
from mmray.registry.encoders import resolve_weights
from mmray.store import FeatureStore
from mmray.store.keys import UNDATED
from mmray.train.pretrain.config import REGION_GROUP, PretrainConfig
from mmray.train.pretrain.job import run_pretrain

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
N_PATIENTS = 10
ARGS = ["name=dino_test", "backbone=cnn_small", "wsi.target_mpp=2.0", "wsi.tile_px=64", "wsi.region_px=256",
        "data.tiles_per_slide=0", "data.cache=true", "data.read_batch_size=16", "crops.global_px=32",
        "crops.local_px=16", "dino.epochs=4", "dino.batch_size=16", "dino.out_dim=256", "dino.head_hidden_dim=64",
        "dino.head_bottleneck_dim=32", "dino.warmup_epochs=1", "dino.lr=0.008", "dino.momentum_teacher=0.95",
        "dino.freeze_last_layer=0",
        "dino.local_crops_number=2", "dino.drop_path_rate=0.0", "probe.slides=6", "probe.tiles_per_slide=8",
        "embed=true", "region.enabled=true", "region.embed_dim=24", "region.depth=1", "region.heads=3",
        "region.dino.epochs=2", "region.dino.batch_size=4", "region.dino.out_dim=64", "region.dino.head_hidden_dim=32",
        "region.dino.head_bottleneck_dim=16", "region.dino.warmup_epochs=1", "region.dino.local_crops_number=2"]


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    cohort, patients = small_slide_cohort(root / "cohort", n=N_PATIENTS, seed=5, width_px=2048, height_px=1536)
    store = FeatureStore(str(root / "store"))
    labels = pd.DataFrame({"patient_id": [p.patient_id for p in patients], "event_time": UNDATED,
                           "time_days": [p.time_days for p in patients], "event": [p.event for p in patients],
                           "subtype": [p.subtype for p in patients]})
    store.write_table("labels", labels)
    cfg = load_config(PretrainConfig, None, [f"cohort={cohort / 'cohort.yaml'}", f"store={store.uri}", *ARGS])
    report = run_pretrain(cfg)
    return cfg, store, report


def test_pretraining_writes_a_registered_encoder_the_slide_stage_loads_by_name(pretrained):
    cfg, store, report = pretrained
    assert report.exit_code == 0, report.text()
    assert [h["epoch"] for h in report.history] == [0, 1, 2, 3, 4]
    assert all(np.isfinite(h["loss"]) and h["images_per_s"] > 0 for h in report.history[1:])
    assert {"probe_linear_bacc", "probe_knn_acc"} <= set(report.history[0]) <= set(report.history[-1]) | {"attempt"}
    blob = open(report.encoder_uri, "rb").read()
    assert report.encoder_id == f"cnn_small@sha256:{hashlib.sha256(blob).hexdigest()}"
    # the encoder registry builds it from the file; its output is the trained teacher's
    model, dim, _ = build_model(EncoderSpec(name="cnn_small", weights=report.encoder_uri, input_px=32))
    teacher = torch.load(f"{report.output}/runs/tiles/final_checkpoint/dino.pt", weights_only=False)["teacher"]
    from mmray.models.dino_backbones import SmallCNN

    ref = SmallCNN()
    ref.load_state_dict({k[len("backbone."):]: v for k, v in teacher.items() if k.startswith("backbone.")})
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref.eval()(x))
    assert dim == 128
    # registered in MLflow: by name it resolves to the same bytes and the same identity
    path = resolve_weights("dino_test", store=store.uri)
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == hashlib.sha256(blob).hexdigest()
    assert resolve(EncoderConfig(name="cnn_small", weights="dino_test", input_px=32),
                   store=store.uri).encoder_id == report.encoder_id
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=report.mlflow["tracking_uri"], registry_uri=report.mlflow["tracking_uri"])
    mv = client.get_model_version("dino_test", report.mlflow["version"])
    assert mv.tags["mmray.encoder_id"] == report.encoder_id
    losses = client.get_metric_history(report.mlflow["run_id"], "loss")
    assert sorted(m.step for m in losses) == [1, 2, 3, 4]
    probe = client.get_metric_history(report.mlflow["run_id"], "probe_linear_bacc")
    assert 0 in {m.step for m in probe}  # the random initialisation's score is logged as epoch 0


def test_slides_are_embedded_with_it_and_the_4096_level_writes_one_vector_per_region(pretrained):
    cfg, store, report = pretrained
    key = store.manifest("wsi_tiles")["params"]["embed_key"]
    assert key["encoder_id"] == report.encoder_id and key["input_px"] == 32
    slide = store.read_table("wsi_slide")
    assert set(slide["encoder_id"]) == {report.encoder_id}
    regions = store.read_table(REGION_GROUP)
    tiles = pd.concat([store.read_bag("wsi_tiles", b) for b in store.bag_ids("wsi_tiles")])
    want = tiles[tiles["scale"] == "region"]
    assert len(regions) == len(want) > 0
    assert set(zip(regions["slide_id"], regions["x"], regions["y"])) == set(zip(want["slide_id"], want["x"],
                                                                                 want["y"]))
    assert {len(e) for e in regions["embedding"]} == {24} and set(regions["size_l0"]) == {1024}
    assert report.region["encoder_id"].startswith("vit4k-24@sha256:") and report.groups[REGION_GROUP]


def test_hipt_trains_on_the_regions_with_the_cross_validation_loop(pretrained, tmp_path):
    from mmray.train.config import TrainJobConfig
    from mmray.train.cv import run_train

    _, store, _ = pretrained
    cfg = load_config(TrainJobConfig, None, [
        f"store={store.uri}", "tasks=[survival_discrete]", "modality_sets={regions: [tiles]}",
        "models=[{name: hipt, hparams: {dim: 24, n_heads: 3}}]", "folds.n_folds=2", "train.executor=local",
        "train.max_epochs=3", "train.patience=3", "train.batch_size=4", "train.n_bins=2", "n_boot=5",
        "mlflow.enabled=false", f"output={tmp_path / 'run'}"])
    rep = run_train(cfg)
    ok = rep.results[rep.results["status"] == "ok"]
    assert len(ok) == 2 and set(ok["model"]) == {"hipt"}, rep.text()
    att = pd.read_parquet(tmp_path / "run" / "attention.parquet")
    assert len(att) and set(att["size_l0"]) == {1024}
    for _, g in att.groupby(["fold", "patient_id"]):
        assert g["attention"].sum() == pytest.approx(1.0, abs=1e-5)


def test_a_rerun_with_the_same_config_and_slides_resumes_without_training(pretrained):
    cfg, store, report = pretrained
    again = run_pretrain(cfg)
    assert again.resumed and again.encoder_id == report.encoder_id
    assert json.loads(open(f"{report.output}/pretrain.json").read())["key"] == report.key
