"""Self-supervised CT encoder: DINO on the cohort's crops inside `ingest ct_deep`, weights in the store, reused.

A few epochs on six tiny studies: the weights file loads into the CT encoder and gives the stored
embeddings, its identity is name@sha256 of the file, the run's losses are in the lineage, a rerun
reuses the weights (no training) and writes no new version, and the trained teacher differs from the
initialisation it started from.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ingest"))
from ct_testdata import ct_patients, write_cohort_spec, write_studies  # noqa: E402

from mmray import uri as uri_mod  # noqa: E402
from mmray.features.ct_crop import CropSpec  # noqa: E402
from mmray.features.ct_encoder import CtEncoder, CtEncoderConfig, create_model, resolve  # noqa: E402
from mmray.ingest.ct import CtConfig, patient_jobs, settings_for  # noqa: E402
from mmray.ingest.ct_source import study_crop  # noqa: E402
from mmray.ingest.run import IngestConfig, run_ingest  # noqa: E402
from mmray.store import FeatureStore  # noqa: E402

pytestmark = pytest.mark.integration
DEEP = {"crop": {"crop_mm": 48.0, "spacing_mm": 3.0}, "encoder": {"name": "cnn_small", "widen_factor": 0.25},
        "ssl": {"enabled": True, "cpus_per_worker": 1.0,
                "dino": {"epochs": 2, "batch_size": 3, "warmup_epochs": 1, "out_dim": 256, "head_hidden_dim": 64,
                         "head_bottleneck_dim": 32, "local_crops_number": 2},
                "views": {"global_vox": 12, "local_vox": 8}}}


@pytest.fixture(scope="module", autouse=True)
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _run(spec, store, **deep):
    cfg = IngestConfig(cohort=str(spec), store=str(store), modalities=("ct_deep",), ct={"deep": {**DEEP, **deep}})
    (report,) = run_ingest(cfg, patient_key=lambda pid: pid, progress=lambda line: None)
    return report


def test_dino_weights_are_trained_stored_loaded_by_the_encoder_and_reused(tmp_path):
    studies = write_studies(tmp_path, ct_patients(8)[:6])
    spec = write_cohort_spec(tmp_path, studies)
    store = FeatureStore(tmp_path / "store")
    r1 = _run(spec, store.uri)
    assert (r1.n_done, len(r1.failures), r1.groups) == (6, 0, {"ct_embedding": "v0001"})
    assert any("trained now: DINO on 6 studies, 2 epochs" in n for n in r1.notes), r1.notes
    assert not any("RANDOM" in n for n in r1.notes)
    man = store.manifest("ct_embedding")
    ssl = man["params"]["ssl"]
    weights = uri_mod.join(store.uri, "_models", "ct_ssl", ssl["key"], "weights.pt")
    sha = hashlib.sha256(Path(weights).read_bytes()).hexdigest()
    assert man["params"]["encoder_id"] == f"cnn_small-w0.25@sha256:{sha}"
    assert [h["epoch"] for h in ssl["history"]] == [0, 1, 2] and all(np.isfinite(h["loss"]) for h in ssl["history"][1:])
    # The stored weights are the encoder's: embedding a crop with them gives the stored row.
    rows = store.read_table("ct_embedding").set_index("patient_id")
    cfg = CtEncoderConfig(name="cnn_small", widen_factor=0.25)
    encoder = CtEncoder(resolve(cfg, weights=weights), device="cpu")
    job = next(j for j in patient_jobs(_manifest(spec)) if j.patient_id == studies[0]["patient_id"])
    crop = study_crop(job, settings=settings_for(CtConfig()), spec=CropSpec(crop_mm=48.0, spacing_mm=3.0),
                      patient_key=lambda p: p, deep_hash_="")
    cols = [c for c in rows.columns if c.startswith("emb_")]
    np.testing.assert_allclose(rows.loc[studies[0]["patient_id"], cols].to_numpy(float),
                               encoder.embed(crop["image"][None], crop["mask"][None])[0], rtol=1e-4, atol=1e-5)
    trained = torch.load(weights, weights_only=True)["state_dict"]
    init = create_model(cfg).state_dict()
    assert set(trained) == set(init)
    assert any(not torch.allclose(trained[k].float(), init[k].float()) for k in init)  # DINO moved the weights
    # Rerun: the weights are reused (same settings) and every study with them -> no new version.
    r2 = _run(spec, store.uri)
    assert (r2.n_done, r2.n_skipped, r2.groups) == (0, 6, {})
    assert any("self-supervised CT encoder reused" in n for n in r2.notes), r2.notes


def _manifest(spec):
    from mmray.cohort import load_cohort

    return load_cohort(str(spec)).manifest()
