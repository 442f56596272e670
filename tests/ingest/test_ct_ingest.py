"""`mmray ingest --modalities ct` end to end on Ray: rows, failures, NIfTI, no PHI anywhere, reruns."""

from __future__ import annotations

import gzip
import io
import logging
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
from ct_testdata import ct_patients, write_cohort_spec, write_studies

from mmray.cli import main
from mmray.ingest.ct_study import uid_key
from mmray.ingest.pseudonym import KEY_ENV, Pseudonymiser
from mmray.ingest.run import IngestConfig, run_ingest
from mmray.store import FeatureStore

pytestmark = pytest.mark.integration
KEY = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module", autouse=True)
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("ctingest")
    patients = ct_patients(8, corrupt=("dicom_no_pixels", "seg_geometry_mismatch"))
    studies = write_studies(root, patients)
    (root / studies[0]["path"] / "README.txt").write_text("not DICOM\n")
    return root, studies


def _intact(studies):
    return [s for s in studies if s["corrupt"] is None]


def _texts_under(folder: Path):
    """(path, text) of every file under ``folder``: Parquet as its values, .nii.gz decompressed."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        if path.suffix == ".parquet":
            table = pq.read_table(io.BytesIO(raw))
            yield path, raw.decode("latin-1") + str(table.to_pylist()) + str(table.schema.metadata)
        elif path.name.endswith(".gz"):
            yield path, gzip.decompress(raw).decode("latin-1")
        else:
            yield path, raw.decode("latin-1")


def _phi_hits(text: str, studies) -> list[str]:
    hits = []
    for s in studies:
        for value in s["phi"]:
            if value.isdigit():  # birth date, MRN digits: as a whole token, never inside a float
                found = re.search(rf"(?<![\d.]){value}(?![\d.])", text)
            else:
                found = value.lower() in text.lower()
            if found:
                hits.append(value)
    return hits


def test_cli_ingest_records_failures_while_the_rest_finish_and_writes_no_phi(cohort, tmp_path, capfd, caplog,
                                                                                 monkeypatch):
    root, studies = cohort
    caplog.set_level(logging.INFO, logger="mmray")
    monkeypatch.setenv(KEY_ENV, KEY)
    spec = write_cohort_spec(root, studies)
    store_dir = tmp_path / "store"
    code = main(["ingest", "--cohort", str(spec), "--store", str(store_dir), "--modalities", "ct",
                 "ct.write_nifti=true"])
    out, err = capfd.readouterr()
    assert code == 3  # finished, some inputs failed
    key = Pseudonymiser(KEY.encode())
    store = FeatureStore(store_dir)
    rows = store.read_table("radiomics").set_index("patient_id")
    intact = _intact(studies)
    assert sorted(rows.index) == sorted(key(s["patient_id"]) for s in intact)
    for s in intact:
        row = rows.loc[key(s["patient_id"])]
        assert row["mask_voxels"] == s["tumour_voxels"] and row["n_slices"] == s["n_slices"]
        assert str(row["event_time"].date()) == s["acquisition_date"]
        assert row["original_firstorder_Mean"] == pytest.approx(s["tumour_mean_hu"], abs=1e-6)
        mask = nib.load(store_dir / row["mask_nifti_path"])
        assert int(np.asarray(mask.dataobj).sum()) == s["tumour_voxels"]
        assert nib.load(store_dir / row["image_nifti_path"]).shape == tuple(s["shape_zyx"][::-1])
    assert len([c for c in rows.columns if c.startswith("original_")]) == 107
    failures = store.failures("ingest-ct").set_index("patient_id")
    broken = {s["corrupt"]: s for s in studies if s["corrupt"]}
    no_pixels = failures.loc[key(broken["dicom_no_pixels"]["patient_id"])]
    assert "has no pixel data" in no_pixels["reason"]
    bad_file = broken["dicom_no_pixels"]["corrupt_detail"]["file"]  # named by its keyed label, never by its name
    assert bad_file.removesuffix(".dcm") not in no_pixels["reason"]
    assert f"file {uid_key('file:' + bad_file, key)} " in no_pixels["reason"], no_pixels["reason"]
    assert "match no CT slice" in failures.loc[key(broken["seg_geometry_mismatch"]["patient_id"]), "reason"]
    assert len(failures) == 2
    n = len(studies)
    assert f"ct: {n}/{n} studies done, 2 failed" in caplog.text and "2 input(s) failed" in out  # progress; summary
    # No header PHI anywhere: store files (data, manifests, NIfTI, failures), output, Ray's logs.
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    places = list(_texts_under(store_dir)) + [("stdout", out), ("stderr", err), ("log", caplog.text)]
    places += list(_texts_under(session / "logs"))
    assert len(places) > 10
    assert set(studies[0]["phi"]) <= set(_phi_hits(" ".join(studies[0]["phi"]), studies))  # the check can fail
    for where, text in places:
        assert _phi_hits(text, studies) == [], where
    for where, text in _texts_under(store_dir):  # with a pseudonym key, not even the research barcode
        assert not any(s["patient_id"] in text for s in studies), where


def _run(spec, store, **ct):
    cfg = IngestConfig(cohort=str(spec), store=str(store), modalities=("ct",), force=ct.pop("force", False), ct=ct)
    (report,) = run_ingest(cfg, patient_key=lambda pid: pid, progress=lambda line: None)
    return report


def test_rerun_skips_finished_studies_and_force_recomputes(cohort, tmp_path):
    root, studies = cohort
    held_back = _intact(studies)[-1]
    first = write_cohort_spec(root, [s for s in studies if s is not held_back], name="first")
    store = FeatureStore(tmp_path / "store")
    r1 = _run(first, store.uri)
    n_ok = len(_intact(studies)) - 1
    assert (r1.n_done, r1.n_skipped, len(r1.failures), r1.groups) == (n_ok, 0, 2, {"radiomics": "v0001"})
    r2 = _run(first, store.uri)  # nothing new: nothing computed, no new version
    assert (r2.n_done, r2.n_skipped, len(r2.failures), r2.groups) == (0, n_ok, 2, {})
    assert store.versions("radiomics") == ["v0001"] and any("up to date" in n for n in r2.notes)
    everyone = write_cohort_spec(root, studies, name="everyone")
    r3 = _run(everyone, store.uri)  # one new study: only it is computed
    assert (r3.n_done, r3.n_skipped, r3.groups) == (1, n_ok, {"radiomics": "v0002"})
    v1 = store.read_table("radiomics", version="v0001").set_index("patient_id").sort_index()
    v2 = store.read_table("radiomics", version="v0002").set_index("patient_id").sort_index()
    assert sorted(v2.index) == sorted(s["patient_id"] for s in _intact(studies))
    assert v2.drop(index=held_back["patient_id"]).equals(v1)  # reused rows carried unchanged
    r4 = _run(everyone, store.uri, force=True)
    assert (r4.n_done, r4.n_skipped, r4.groups) == (n_ok + 1, 0, {"radiomics": "v0003"})
    r5 = _run(everyone, store.uri, segment_labels=["tumor"])  # other settings, other params hash
    assert (r5.n_done, r5.n_skipped) == (n_ok + 1, 0)
    v5 = store.read_table("radiomics", version=r5.groups["radiomics"])
    assert v5["params_hash"].nunique() == 1 and v5["params_hash"].iloc[0] != v2["params_hash"].iloc[0]
    assert store.manifest("radiomics")["params"]["segment_labels"] == ["tumor"]
