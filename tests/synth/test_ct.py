"""Synthetic CT series + SEG: every reader (pydicom, SimpleITK, highdicom) sees the planted truth."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import CTImageStorage, SegmentationStorage

from mmray.synth.ct import TISSUE_CODE, synth_ct_volume, write_ct
from mmray.synth.latent import sample_patients
from mmray.synth.profiles import get_profile

SEED = 11
PROFILE = get_profile("tiny")


def _cohort(seed: int = SEED):
    patients = sample_patients(8, profile=PROFILE, seed=seed)
    # Break two CT studies (never patients 0 and 1, as assign_corruptions does).
    broken = [p for p in patients[2:] if p.has_ct][:2]
    broken[0].corruptions.append("dicom_no_pixels")
    broken[1].corruptions.append("seg_geometry_mismatch")
    return patients


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    patients = _cohort()
    out = tmp_path_factory.mktemp("cohort") / "ct"
    studies = write_ct(patients, out_dir=out, profile=PROFILE, seed=SEED)
    by_id = {p.patient_id: p for p in patients}
    return out, studies, by_id


def _read_study(folder: Path):
    """(CT datasets sorted by ascending z, the SEG dataset) of one study folder."""
    cts, segs = [], []
    for f in folder.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        (segs if ds.SOPClassUID == SegmentationStorage else cts).append(ds)
    assert len(segs) == 1
    cts.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    return cts, segs[0]


def _intact(studies):
    return [s for s in studies if s["corrupt"] is None]


def test_one_study_per_ct_patient_with_its_files(cohort):
    out, studies, by_id = cohort
    assert [s["patient_id"] for s in studies] == [p for p, pt in by_id.items() if pt.has_ct]
    assert len(studies) < len(by_id)  # the cohort has a patient without CT
    assert json.loads(json.dumps(studies)) == studies  # goes into truth.json as is
    unsorted_names = 0
    for s in studies:
        folder = out.parent / s["path"]
        assert s["path"] == f"ct/{s['patient_id']}" and folder.is_dir()
        files = sorted(folder.glob("*.dcm"))
        assert len(files) == s["n_slices"] + 1 == PROFILE.ct_slices + 1
        assert (folder / s["seg_file"]).is_file()
        cts = [pydicom.dcmread(f) for f in files if f.name != s["seg_file"]]
        z = [float(ds.ImagePositionPatient[2]) for ds in cts]
        unsorted_names += z != sorted(z) and z != sorted(z, reverse=True)
    assert unsorted_names == len(studies)  # file order never gives slice order


def test_ct_headers_look_like_a_scanner_export(cohort):
    out, studies, by_id = cohort
    for s in studies:
        patient = by_id[s["patient_id"]]
        cts, _ = _read_study(out.parent / s["path"])
        sp = PROFILE.ct_pixel_spacing_mm
        th = PROFILE.ct_slice_thickness_mm
        for k, ds in enumerate(cts):
            assert ds.SOPClassUID == CTImageStorage and ds.Modality == "CT"
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            assert (ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation) == (16, 16, 1)
            assert ds.PhotometricInterpretation == "MONOCHROME2"
            assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
            assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
            assert [float(v) for v in ds.PixelSpacing] == [sp, sp]
            assert float(ds.SliceThickness) == float(ds.SpacingBetweenSlices) == th
            assert float(ds.ImagePositionPatient[2]) == pytest.approx(s["origin_mm"][2] + k * th)
            assert ds.StudyInstanceUID == s["study_uid"] and ds.SeriesInstanceUID == s["series_uid"]
            assert ds.StudyDate == patient.ct_date.strftime("%Y%m%d") == s["acquisition_date"].replace("-", "")
            assert ds.PatientSex == patient.sex[0]
            # PatientID is the hospital MRN; the research barcode is the trial subject ID.
            assert ds.PatientID.startswith("MR") and ds.PatientID != patient.patient_id
            assert ds.ClinicalTrialSubjectID == patient.patient_id
            assert "^" in str(ds.PatientName)
        assert len({ds.FrameOfReferenceUID for ds in cts}) == 1
        assert len({ds.SOPInstanceUID for ds in cts}) == len(cts)
        phi_in_header = {str(cts[0].get(k)) for k in (
            "PatientName", "PatientID", "PatientBirthDate", "PatientAddress", "InstitutionName",
            "InstitutionAddress", "ReferringPhysicianName", "AccessionNumber", "StudyID")}
        assert set(s["phi"]) == phi_in_header and patient.patient_id not in s["phi"]


def test_stored_pixels_are_hu_plus_1024(cohort):
    out, studies, by_id = cohort
    s = studies[0]
    vol = synth_ct_volume(by_id[s["patient_id"]], profile=PROFILE, seed=SEED)
    cts, _ = _read_study(out.parent / s["path"])
    for k, ds in enumerate(cts):
        assert ds.pixel_array.dtype == np.int16
        np.testing.assert_array_equal(ds.pixel_array.astype(int) - 1024, vol.hu[k])
        np.testing.assert_array_equal(pydicom.pixels.apply_modality_lut(ds.pixel_array, ds), vol.hu[k])


def test_instance_numbers_head_first_or_shuffled(cohort):
    out, studies, _ = cohort
    seen = set()
    for s in studies:
        cts, _ = _read_study(out.parent / s["path"])
        numbers = [int(ds.InstanceNumber) for ds in cts]  # ascending z
        assert sorted(numbers) == list(range(1, len(cts) + 1))
        head_first = numbers == sorted(numbers, reverse=True)
        assert head_first != s["instances_shuffled"]
        seen.add(s["instances_shuffled"])
    assert seen == {True, False}


def test_simpleitk_stacks_the_series_into_the_planted_volume(cohort):
    out, studies, by_id = cohort
    for s in _intact(studies):
        folder = out.parent / s["path"]
        reader = sitk.ImageSeriesReader()
        names = reader.GetGDCMSeriesFileNames(str(folder), s["series_uid"])
        assert len(names) == s["n_slices"]
        reader.SetFileNames(names)
        img = reader.Execute()
        assert img.GetSize() == tuple(s["shape_zyx"][::-1])
        np.testing.assert_allclose(img.GetSpacing(), s["spacing_mm_zyx"][::-1], atol=1e-6)
        np.testing.assert_allclose(img.GetOrigin(), s["origin_mm"], atol=1e-6)
        np.testing.assert_allclose(img.GetDirection(), np.eye(3).ravel(), atol=1e-9)
        hu = sitk.GetArrayFromImage(img)  # SimpleITK applies the rescale: Hounsfield units
        vol = synth_ct_volume(by_id[s["patient_id"]], profile=PROFILE, seed=SEED)
        np.testing.assert_array_equal(hu, vol.hu)
        mean = {t: hu[vol.tissue == c].mean() for t, c in TISSUE_CODE.items()}
        assert mean["air"] == pytest.approx(-1000, abs=3)
        assert mean["fat"] == pytest.approx(-100, abs=5)
        assert mean["soft_tissue"] == pytest.approx(40, abs=5)
        assert mean["lung"] == pytest.approx(-850, abs=10)
        assert mean["bone"] == pytest.approx(450, abs=20)
        assert mean["tumour"] == pytest.approx(s["tumour_mean_hu"]) == pytest.approx(30, abs=15)
        assert (vol.tissue == TISSUE_CODE["tumour"]).sum() == s["tumour_voxels"]


def _seg_mask_on_ct_grid(seg, cts):
    """Place each SEG frame on the CT slice with the same ImagePositionPatient."""
    ct_pos = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in cts])
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    mask = np.zeros((len(cts), seg.Rows, seg.Columns), dtype=bool)
    for fg, frame in zip(seg.PerFrameFunctionalGroupsSequence, frames):
        pos = np.array([float(v) for v in fg.PlanePositionSequence[0].ImagePositionPatient])
        hit = np.nonzero(np.all(np.abs(ct_pos - pos) < 1e-3, axis=1))[0]
        if len(hit) != 1:
            return None
        mask[hit[0]] |= frame.astype(bool)
    return mask


def test_seg_covers_only_tumour_slices_and_aligns_with_ct(cohort):
    out, studies, by_id = cohort
    for s in studies:
        if s["corrupt"] == "seg_geometry_mismatch":
            continue
        folder = out.parent / s["path"]
        cts, _ = _read_study(folder)
        seg = hd.seg.segread(folder / s["seg_file"])
        first, last = s["tumour_slices"]
        assert 3 <= last - first + 1 < s["n_slices"] and first > 0 and last < s["n_slices"] - 1
        assert seg.number_of_frames == last - first + 1
        assert seg.SegmentationType == "BINARY" and seg.SeriesInstanceUID == s["seg_series_uid"]
        assert seg.get_segment_description(1).SegmentLabel == "Tumor"
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == s["series_uid"]
        assert seg.FrameOfReferenceUID == cts[0].FrameOfReferenceUID
        # Frame order is highdicom's (it sorts by position); each frame names its source slice.
        uid_to_k = {ds.SOPInstanceUID: k for k, ds in enumerate(cts)}
        covered = []
        for fg in seg.PerFrameFunctionalGroupsSequence:
            k = uid_to_k[fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
            covered.append(k)
            assert [float(v) for v in fg.PlanePositionSequence[0].ImagePositionPatient] == pytest.approx(
                [float(v) for v in cts[k].ImagePositionPatient])
        assert sorted(covered) == list(range(first, last + 1))
        mask = _seg_mask_on_ct_grid(seg, cts)
        assert mask is not None and int(mask.sum()) == s["tumour_voxels"]
        assert np.argwhere(mask).mean(axis=0) == pytest.approx(s["tumour_centroid_zyx"])
        np.testing.assert_array_equal(mask, synth_ct_volume(by_id[s["patient_id"]], profile=PROFILE, seed=SEED).mask)


def test_tumour_grows_with_z_ct(tmp_path):
    base = sample_patients(8, profile=PROFILE, seed=SEED)[0]
    studies = []
    for i, z_ct in enumerate((-1.5, 0.0, 1.5)):
        patient = dataclasses.replace(base, z_ct=z_ct, corruptions=[])
        out = tmp_path / f"z{i}" / "ct"
        (study,) = write_ct([patient], out_dir=out, profile=PROFILE, seed=SEED)
        cts, _ = _read_study(out / patient.patient_id)
        hu = np.stack([ds.pixel_array.astype(float) - 1024 for ds in cts])
        vol = synth_ct_volume(patient, profile=PROFILE, seed=SEED)
        study["measured_std_hu"] = float(hu[vol.mask].std())
        studies.append(study)
    voxels = [s["tumour_voxels"] for s in studies]
    radii = [s["tumour_radius_mm"] for s in studies]
    stds = [s["measured_std_hu"] for s in studies]
    assert voxels[0] < voxels[1] < voxels[2] and voxels[2] > 3 * voxels[0]
    assert radii == pytest.approx([12 * np.exp(0.25 * z) for z in (-1.5, 0.0, 1.5)], rel=1e-3)
    assert stds[0] < stds[1] < stds[2]
    assert stds == pytest.approx([15 * np.exp(0.3 * z) for z in (-1.5, 0.0, 1.5)], rel=0.1)
    spans = [s["tumour_slices"][1] - s["tumour_slices"][0] + 1 for s in studies]
    assert spans[0] <= spans[1] <= spans[2] < PROFILE.ct_slices


def _digest(folder: Path) -> dict[str, str]:
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.rglob("*"))
            if f.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    patients = sample_patients(8, profile=PROFILE, seed=SEED)[:2]
    a = write_ct(patients, out_dir=tmp_path / "a" / "ct", profile=PROFILE, seed=SEED)
    b = write_ct(patients, out_dir=tmp_path / "b" / "ct", profile=PROFILE, seed=SEED)
    c = write_ct(patients, out_dir=tmp_path / "c" / "ct", profile=PROFILE, seed=SEED + 1)
    assert a == b
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert a[0]["study_uid"] != c[0]["study_uid"] and a[0]["tumour_voxels"] != c[0]["tumour_voxels"]
    assert set(_digest(tmp_path / "a").values()).isdisjoint(_digest(tmp_path / "c").values())


def test_rewrite_replaces_old_files(tmp_path):
    patients = sample_patients(8, profile=PROFILE, seed=SEED)[:1]
    out = tmp_path / "ct"
    write_ct(patients, out_dir=out, profile=PROFILE, seed=SEED)
    (study,) = write_ct(patients, out_dir=out, profile=PROFILE, seed=SEED + 1)
    assert len(list((out / study["patient_id"]).glob("*.dcm"))) == study["n_slices"] + 1


def test_dicom_no_pixels_breaks_exactly_one_slice(cohort):
    out, studies, _ = cohort
    (s,) = [s for s in studies if s["corrupt"] == "dicom_no_pixels"]
    folder = out.parent / s["path"]
    cts, seg = _read_study(folder)
    assert len(cts) == s["n_slices"]  # the file is there, headers intact
    missing = [ds for ds in cts if "PixelData" not in ds]
    assert len(missing) == 1
    assert missing[0].SOPInstanceUID + ".dcm" == s["corrupt_detail"]["file"]
    assert cts.index(missing[0]) == s["corrupt_detail"]["slice_index"]
    with pytest.raises(AttributeError):
        missing[0].pixel_array
    assert seg.NumberOfFrames == s["tumour_slices"][1] - s["tumour_slices"][0] + 1  # SEG itself is fine
    assert _seg_mask_on_ct_grid(seg, cts).sum() == s["tumour_voxels"]


def test_seg_geometry_mismatch_matches_no_ct_slice(cohort):
    out, studies, _ = cohort
    (s,) = [s for s in studies if s["corrupt"] == "seg_geometry_mismatch"]
    folder = out.parent / s["path"]
    cts, seg = _read_study(folder)
    assert all("PixelData" in ds for ds in cts)
    # Still references the CT series and its instances, as a broken export would.
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == s["series_uid"]
    refs = {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert refs <= {ds.SOPInstanceUID for ds in cts}
    assert seg.NumberOfFrames == s["tumour_slices"][1] - s["tumour_slices"][0] + 1
    th = PROFILE.ct_slice_thickness_mm
    ct_z = np.array([float(ds.ImagePositionPatient[2]) for ds in cts])
    for fg in seg.PerFrameFunctionalGroupsSequence:
        z = float(fg.PlanePositionSequence[0].ImagePositionPatient[2])
        assert np.abs(ct_z - z).min() > 0.1 * th
        off_grid = (z - ct_z[0]) / th
        assert abs(off_grid - round(off_grid)) > 0.1
    assert _seg_mask_on_ct_grid(seg, cts) is None
    assert s["corrupt_detail"]["seg_shift_z_mm"] == pytest.approx(0.37 * th + 100)
