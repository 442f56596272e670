"""Discovery: grouping by study/series, pairing CT with its SEG, junk files, S3 folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.fs as pafs
import pydicom
import pytest
from ct_testdata import ct_patients, write_studies
from pydicom.uid import generate_uid

from mmray import uri as uri_mod
from mmray.ingest.ct_study import PatientJob, StudySettings, run_patient
from mmray.ingest.dicom_discovery import local_folder, scan_folder
from mmray.ingest.nifti import nifti_paths
from mmray.ingest.phi import Redactor


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("ctdisc")
    (s,) = write_studies(root, ct_patients(4)[:1])
    return root / s["path"], s


def _copy_as_new_series(src: Path, dst: Path, *, drop: int = 0) -> str:
    """Copy the CT slices of ``src`` into ``dst`` as another series (new UIDs); returns its UID."""
    series_uid = generate_uid()
    for path in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        if ds.Modality != "CT":
            continue
        if drop:
            drop -= 1
            continue
        ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, 3
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(dst / f"{ds.SOPInstanceUID}.dcm")
    return series_uid


def test_pairs_the_referenced_series_and_reports_the_rest(study, tmp_path):
    folder, s = study
    shutil.copytree(folder, tmp_path / "p", dirs_exist_ok=True)
    other = _copy_as_new_series(folder, tmp_path / "p")
    (tmp_path / "p" / "README.txt").write_text("exported by PACS\n")
    (tmp_path / "p" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(200))
    (tmp_path / "p" / "sub").mkdir()
    (tmp_path / "p" / "sub" / "notes.csv").write_text("a,b\n1,2\n")
    slice_bytes = next(folder.glob("1*.dcm")).read_bytes()
    (tmp_path / "p" / "cut-early.dcm").write_bytes(slice_bytes[:300])  # pydicom reads these without error
    (tmp_path / "p" / "cut-late.dcm").write_bytes(slice_bytes[:1200])
    found = scan_folder(str(tmp_path / "p"))
    kinds = sorted((x.kind, len(x.instances)) for x in found.series)
    assert kinds == [("ct", s["n_slices"]), ("ct", s["n_slices"]), ("seg", 1)]
    (pair,) = found.pairs
    assert pair.ct.series_uid == s["series_uid"] and pair.seg.series_uid == s["seg_series_uid"]
    assert pair.study_uid == s["study_uid"] and pair.study_date == s["acquisition_date"].replace("-", "")
    assert other != pair.ct.series_uid
    assert f"CT series #3 ({s['n_slices']} file(s)) has no segmentation; not used" in found.notes
    assert found.non_dicom == 3 and "skipped 3 non-DICOM file(s)" in found.notes
    assert [u.split(" ")[0] for u in found.unreadable] == ["cut-early.dcm", "cut-late.dcm"]
    assert "truncated?" in found.unreadable[0]


def test_seg_without_referenced_series_falls_back_to_its_source_images(study, tmp_path):
    folder, s = study
    shutil.copytree(folder, tmp_path / "p", dirs_exist_ok=True)
    seg_path = tmp_path / "p" / s["seg_file"]
    seg = pydicom.dcmread(seg_path)
    del seg.ReferencedSeriesSequence
    seg.save_as(seg_path)
    _copy_as_new_series(folder, tmp_path / "p")  # same frame of reference: only the source images decide
    (pair,) = scan_folder(str(tmp_path / "p")).pairs
    assert pair.ct.series_uid == s["series_uid"]


def test_header_phi_is_collected_for_scrubbing(study):
    folder, s = study
    redactor = Redactor()
    scan_folder(str(folder), redactor=redactor)
    for value in s["phi"]:
        assert redactor.scrub(f"x {value} y") == "x [redacted] y"
    name = s["phi"][0]
    assert redactor.scrub(f"family {name.split('^')[0].upper()}") == "family [redacted]"


@pytest.mark.integration
def test_s3_folder_is_downloaded_processed_and_cleaned_up(study, s3_env, tmp_path):
    folder, s = study
    fs, base = uri_mod.filesystem(s3_env)
    for path in folder.glob("*.dcm"):
        with fs.open_output_stream(f"{base}/ct/{s['patient_id']}/{path.name}") as out:
            out.write(path.read_bytes())
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    remote = f"{s3_env}/ct/{s['patient_id']}"
    with local_folder(remote, scratch_dir=str(scratch)) as local:
        assert sorted(p.name for p in Path(local).iterdir()) == sorted(p.name for p in folder.glob("*.dcm"))
    assert list(scratch.iterdir()) == []  # scratch copy removed
    from mmray.features.radiomics import load_params, params_hash

    params = load_params()
    settings = StudySettings(params=params, params_hash=params_hash(params), write_nifti=True,
                             scratch_dir=str(scratch))
    res = run_patient(PatientJob(patient_id=s["patient_id"], folders=(remote,)), settings,
                      patient_key=lambda pid: pid, store_fs=fs, store_root=f"{base}/store")
    assert res["status"] == "ok", res["failure"]
    assert res["row"]["mask_voxels"] == s["tumour_voxels"]
    rel = nifti_paths(s["patient_id"], res["row"]["study_key"])
    assert res["row"]["image_nifti_path"] == rel["image"]
    for what in ("image", "mask"):
        assert fs.get_file_info(f"{base}/store/{rel[what]}").type == pafs.FileType.File
    assert list(scratch.iterdir()) == []


def test_one_read_per_file_hashes_and_pixels_match_and_the_memory_cap_defers(study, monkeypatch):
    """Discovery reads each file once: its SHA-256 equals hashing the file, the pixel data it keeps
    equals the file's, and past the in-memory cap pixel data is read back from the file (same volume)."""
    import hashlib

    import numpy as np

    from mmray.ingest import dicom_discovery
    from mmray.ingest.ct_study import _files_sha256
    from mmray.ingest.ct_volume import read_volume

    folder, s = study
    (pair,) = scan_folder(str(folder)).pairs
    files = [*pair.ct.instances, pair.seg_instance]
    for inst in files:
        assert inst.sha256 == hashlib.sha256(Path(inst.path).read_bytes()).digest()
    want = hashlib.sha256()  # the resume signature's file hash, as earlier versions computed it
    for path in sorted(i.path for i in files):
        want.update(hashlib.sha256(Path(path).read_bytes()).digest())
    assert _files_sha256(files) == want.hexdigest()[:32]
    in_memory = read_volume([(i.name, i.ds) for i in pair.ct.instances])

    monkeypatch.setattr(dicom_discovery, "IN_MEMORY_PIXEL_BYTES", 0)
    (lazy,) = scan_folder(str(folder)).pairs
    raw = lazy.ct.instances[0].ds.get_item(dicom_discovery.PIXEL_DATA, keep_deferred=True)
    assert raw.value is None  # dropped from memory
    deferred = read_volume([(i.name, i.ds) for i in lazy.ct.instances])
    np.testing.assert_array_equal(deferred.hu, in_memory.hu)
    np.testing.assert_array_equal(deferred.affine_lps, in_memory.affine_lps)
