"""`mmray ingest --modalities ct_deep` on Ray: crops through the encoder actor pool into ``ct_embedding``.

Values: each stored embedding equals the encoder applied to that patient's crop; each crop holds the
patient's tumour (its volume in mm^3 matches the synthetic truth); a truncated study fails alone; with a
pseudonym key nothing written holds a raw id or header PHI; reruns reuse rows by study content hash.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from ct_testdata import ct_patients, write_cohort_spec, write_studies

from mmray.cli import main
from mmray.features.ct_crop import CropSpec
from mmray.features.ct_encoder import CtEncoder, CtEncoderConfig, create_model, resolve
from mmray.ingest.ct import CtConfig, patient_jobs, settings_for
from mmray.ingest.ct_source import study_crop
from mmray.ingest.pseudonym import KEY_ENV, Pseudonymiser
from mmray.ingest.run import IngestConfig, run_ingest
from mmray.store import FeatureStore

pytestmark = pytest.mark.integration
KEY = "0123456789abcdef0123456789abcdef"
CROP = {"crop_mm": 48.0, "spacing_mm": 3.0}  # 16^3 crops: the tiny studies have 3 mm voxels
ENCODER = {"batch_size": 4}


@pytest.fixture(scope="module", autouse=True)
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """6 studies; the 3rd has a truncated slice file (its last 40% cut off)."""
    root = tmp_path_factory.mktemp("ctdeep")
    studies = write_studies(root, ct_patients(8)[:6])
    folder = root / studies[2]["path"]
    victim = sorted(folder.glob("*.dcm"))[len(list(folder.glob("*.dcm"))) // 2]
    data = victim.read_bytes()
    victim.write_bytes(data[: int(len(data) * 0.6)])
    return root, studies


def _deep(**extra):
    return {"deep": {"crop": CROP, "encoder": ENCODER, **extra}}


def test_truncated_study_fails_alone_values_match_the_encoder_and_nothing_leaks(cohort, tmp_path, capfd, caplog,
                                                                                 monkeypatch):
    root, studies = cohort
    caplog.set_level(logging.INFO, logger="mmray")
    monkeypatch.setenv(KEY_ENV, KEY)
    spec_file = write_cohort_spec(root, studies)
    store_dir = tmp_path / "store"
    code = main(["ingest", "--cohort", str(spec_file), "--store", str(store_dir), "--modalities", "ct_deep",
                 "ct.deep.crop.crop_mm=48", "ct.deep.crop.spacing_mm=3", "ct.deep.encoder.batch_size=4"])
    out, err = capfd.readouterr()
    assert code == 3, out + err  # finished, one input failed
    key = Pseudonymiser(KEY.encode())
    store = FeatureStore(store_dir)
    rows = store.read_table("ct_embedding").set_index("patient_id")
    good = [s for i, s in enumerate(studies) if i != 2]
    assert sorted(rows.index) == sorted(key(s["patient_id"]) for s in good)
    failures = store.failures("ingest-ct_deep")
    assert list(failures["patient_id"]) == [key(studies[2]["patient_id"])]
    assert "cannot be read" in failures["reason"][0] or "pixel data" in failures["reason"][0], failures["reason"][0]
    assert "RANDOM weights" in out + err  # the loud warning
    emb_cols = [c for c in rows.columns if c.startswith("emb_")]
    assert len(emb_cols) == 256 and set(rows["encoder_id"]) == {"resnet10-w0.5@random-seed0"}
    assert "ct_deep: 6/6 studies done, 1 failed" in caplog.text
    # Independent of Ray: crop each study in this process, embed it, compare with the stored row.
    cfg = CtConfig()
    spec = CropSpec(**CROP)
    encoder = CtEncoder(resolve(CtEncoderConfig()), device="cpu")
    jobs = {j.patient_id: j for j in patient_jobs(_manifest(spec_file))}
    for s in good:
        crop = study_crop(jobs[s["patient_id"]], settings=settings_for(cfg), spec=spec, patient_key=key, deep_hash_="")
        row = rows.loc[key(s["patient_id"])]
        np.testing.assert_allclose(row[emb_cols].to_numpy(float),
                                   encoder.embed(crop["image"][None], crop["mask"][None])[0], rtol=1e-4, atol=1e-5)
        # the crop holds the patient's tumour: its volume (3 mm voxels both sides) within 15% of the truth
        assert row["crop_mask_voxels"] == crop["crop_mask_voxels"]
        assert row["crop_mask_voxels"] == pytest.approx(s["tumour_voxels"], rel=0.15)
    # No raw id, barcode, header PHI or folder name in anything the store holds.
    texts = [p.read_bytes().decode("latin-1") for p in store_dir.rglob("*") if p.is_file()]
    for s in studies:
        assert not any(s["patient_id"] in t for t in texts)
        assert not any(v.lower() in t.lower() for t in texts for v in s["phi"] if not v.isdigit())
        assert not any(str(root) in t for t in texts)


def _manifest(spec_file: Path):
    from mmray.cohort import load_cohort

    return load_cohort(str(spec_file)).manifest()


def _run(spec_file, store, *, force=False, **deep):
    cfg = IngestConfig(cohort=str(spec_file), store=str(store), modalities=("ct_deep",), force=force, ct=_deep(**deep))
    (report,) = run_ingest(cfg, patient_key=lambda pid: pid, progress=lambda line: None)
    return report


@pytest.mark.e2e  # three ingests with Ray (45 s): in test-e2e, to keep make test inside its budget
def test_reruns_reuse_rows_by_study_content_and_weights_give_the_identity(cohort, tmp_path):
    root, studies = cohort
    good = [s for i, s in enumerate(studies) if i != 2]
    first = write_cohort_spec(root, good[:-1], name="first")
    store = FeatureStore(tmp_path / "store")
    r1 = _run(first, store.uri)
    assert (r1.n_done, r1.n_skipped, r1.groups) == (4, 0, {"ct_embedding": "v0001"})
    r2 = _run(first, store.uri)  # nothing new: nothing computed, no new version
    assert (r2.n_done, r2.n_skipped, r2.groups) == (0, 4, {})
    everyone = write_cohort_spec(root, good, name="everyone")
    r3 = _run(everyone, store.uri)  # one new study: only it is read and embedded
    assert (r3.n_done, r3.n_skipped, r3.groups) == (1, 4, {"ct_embedding": "v0002"})
    v1 = store.read_table("ct_embedding", version="v0001").set_index("patient_id").sort_index()
    v2 = store.read_table("ct_embedding", version="v0002").set_index("patient_id").sort_index()
    assert v2.drop(index=good[-1]["patient_id"]).equals(v1)  # carried unchanged
    # A study whose files change is read again (its content hash differs).
    victim = sorted((root / good[0]["path"]).glob("*.dcm"))[0]
    saved = victim.read_bytes()
    try:
        victim.write_bytes(saved + b"\0\0")  # trailing padding: same pixels, other bytes
        r4 = _run(everyone, store.uri)
        assert (r4.n_done, r4.n_skipped) == (1, 4)
    finally:
        victim.write_bytes(saved)
    # Weights from a file: identity arch@sha256 of the file; values those of the model with those weights.
    weights = tmp_path / "ct.pt"
    torch.save({"state_dict": create_model(resolve(CtEncoderConfig(seed=5))).state_dict()}, weights)
    r5 = _run(everyone, store.uri, encoder={**ENCODER, "weights": str(weights)})
    assert (r5.n_done, r5.n_skipped) == (5, 0)
    rows = store.read_table("ct_embedding").set_index("patient_id")
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert set(rows["encoder_id"]) == {f"resnet10-w0.5@sha256:{sha}"}
    assert store.manifest("ct_embedding")["params"]["encoder_id"] == f"resnet10-w0.5@sha256:{sha}"
    seeded = CtEncoder(resolve(CtEncoderConfig(seed=5)), device="cpu")  # same weights, built, not loaded
    crop = study_crop(next(j for j in patient_jobs(_manifest(everyone)) if j.patient_id == good[0]["patient_id"]),
                      settings=settings_for(CtConfig()), spec=CropSpec(**CROP), patient_key=lambda p: p, deep_hash_="")
    emb_cols = [c for c in rows.columns if c.startswith("emb_")]
    np.testing.assert_allclose(rows.loc[good[0]["patient_id"], emb_cols].to_numpy(float),
                               seeded.embed(crop["image"][None], crop["mask"][None])[0], rtol=1e-4, atol=1e-5)
    r6 = _run(everyone, store.uri, force=True, encoder={**ENCODER, "weights": str(weights)})
    assert (r6.n_done, r6.n_skipped) == (5, 0)
