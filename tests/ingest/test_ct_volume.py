"""CT series -> HU volume: truth values and geometry, order independence, defects, enhanced CT, NIfTI."""

from __future__ import annotations

import gzip
import random

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from ct_testdata import PROFILE, SEED, ct_patients, write_studies
from pydicom.uid import generate_uid

from mmray.errors import InputError
from mmray.ingest.ct_volume import read_volume
from mmray.ingest.dicom_discovery import scan_folder
from mmray.ingest.nifti import nifti_gz_bytes
from mmray.synth.ct import synth_ct_volume


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("ctvol")
    patients = ct_patients(6, corrupt=("dicom_no_pixels",))
    studies = write_studies(root, patients)
    return root, {p.patient_id: p for p in patients}, {s["patient_id"]: s for s in studies}


def _series(root, study):
    """[(name, dataset)] of the study's CT series, in file-name order (not slice order)."""
    found = scan_folder(str(root / study["path"]))
    (pair,) = found.pairs
    return [(i.name, i.ds) for i in pair.ct.instances]


def _intact(studies):
    return [s for s in studies.values() if s["corrupt"] is None]


def _expected_affine(truth):
    dz, dy, dx = truth["spacing_mm_zyx"]
    affine = np.diag([dx, dy, dz, 1.0])
    affine[:3, 3] = truth["origin_mm"]
    return affine


def test_volume_equals_the_synthetic_truth(cohort):
    root, patients, studies = cohort
    intact = _intact(studies)
    assert {s["instances_shuffled"] for s in intact} == {True, False}  # both numberings covered
    for s in intact:
        truth = synth_ct_volume(patients[s["patient_id"]], profile=PROFILE, seed=SEED)
        vol = read_volume(_series(root, s))
        assert vol.hu.dtype == np.float32 and vol.shape_zyx == tuple(s["shape_zyx"])
        np.testing.assert_array_equal(vol.hu, truth.hu.astype(np.float32))
        assert vol.spacing_mm_zyx == pytest.approx(truth.spacing_mm_zyx)
        assert vol.origin_mm == pytest.approx(truth.origin_mm)
        np.testing.assert_allclose(vol.direction, np.eye(3))
        np.testing.assert_allclose(vol.affine_lps, _expected_affine(s), atol=1e-9)
        np.testing.assert_allclose(vol.affine_ras, np.diag([-1, -1, 1, 1]) @ _expected_affine(s), atol=1e-9)
        np.testing.assert_allclose(vol.positions_mm, truth.slice_positions_mm(), atol=1e-6)
        assert vol.warnings == ()
        as_int = read_volume(_series(root, s), hu_dtype="int16")
        assert as_int.hu.dtype == np.int16
        np.testing.assert_array_equal(as_int.hu, truth.hu)


def test_file_order_and_instance_numbers_do_not_matter(cohort):
    root, _, studies = cohort
    s = next(s for s in _intact(studies) if s["instances_shuffled"])
    series = _series(root, s)
    reference = read_volume(series)
    numbers = [int(ds.InstanceNumber) for _, ds in sorted(series, key=lambda x: float(x[1].ImagePositionPatient[2]))]
    assert numbers != sorted(numbers) and numbers != sorted(numbers, reverse=True)
    for seed in range(3):
        shuffled = series[:]
        random.Random(seed).shuffle(shuffled)
        vol = read_volume(shuffled)
        np.testing.assert_array_equal(vol.hu, reference.hu)
        np.testing.assert_array_equal(vol.affine_lps, reference.affine_lps)
        assert vol.slice_ids == reference.slice_ids


def test_geometry_agrees_with_simpleitk_series_reader(cohort):
    root, _, studies = cohort
    s = _intact(studies)[0]
    vol = read_volume(_series(root, s))
    reader = sitk.ImageSeriesReader()
    folder = str(root / s["path"])
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(folder, s["series_uid"]))
    img = reader.Execute()
    assert img.GetSpacing() == pytest.approx(vol.spacing_mm_zyx[::-1])
    assert img.GetOrigin() == pytest.approx(vol.origin_mm)
    np.testing.assert_allclose(np.array(img.GetDirection()).reshape(3, 3), vol.direction, atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img).astype(np.float32), vol.hu)


def _sorted_by_z(series):
    return sorted(series, key=lambda x: float(x[1].ImagePositionPatient[2]))


def test_missing_slice_is_an_error_naming_the_gap(cohort):
    root, _, studies = cohort
    s = _intact(studies)[0]
    series = _sorted_by_z(_series(root, s))
    z = [float(ds.ImagePositionPatient[2]) for _, ds in series]
    del series[10]
    with pytest.raises(InputError, match="missing slice") as err:
        read_volume(series)
    message = str(err.value)
    assert f"{z[9]:.2f}" in message and f"{z[11]:.2f}" in message and "6.00 mm" in message


def test_uneven_spacing_warns_within_and_fails_beyond_the_tolerance(cohort):
    root, _, studies = cohort
    s = _intact(studies)[0]
    series = _sorted_by_z(_series(root, s))
    x, y, z = (float(v) for v in series[5][1].ImagePositionPatient)
    series[5][1].ImagePositionPatient = [x, y, z + 0.05]
    vol = read_volume(series, spacing_tolerance_mm=0.1)
    (warning,) = vol.warnings
    assert "uneven slice spacing" in warning and f"{z + 0.05:.2f}" in warning
    series[5][1].ImagePositionPatient = [x, y, z + 0.5]
    with pytest.raises(InputError, match="uneven slice spacing.*beyond the tolerance of 0.1 mm") as err:
        read_volume(series, spacing_tolerance_mm=0.1)
    assert f"{z + 0.5:.2f}" in str(err.value)
    assert read_volume(series, spacing_tolerance_mm=1.0).warnings  # a looser tolerance accepts it


def test_slice_without_pixel_data_names_the_file(cohort):
    root, _, studies = cohort
    broken = next(s for s in studies.values() if s["corrupt"] == "dicom_no_pixels")
    uid = broken["corrupt_detail"]["file"].removesuffix(".dcm")
    with pytest.raises(InputError, match="has no pixel data") as err:
        read_volume(_series(root, broken))
    assert uid in str(err.value) and err.value.stage == "volume"


def test_wrong_pixel_size_names_the_file(cohort):
    root, _, studies = cohort
    s = _intact(studies)[0]
    series = _series(root, s)
    _, ds = series[3]
    ds.PixelData = ds.PixelData[:-128]
    with pytest.raises(InputError, match=r"has 8064 bytes of pixel data, but .* = 8192") as err:
        read_volume(series)
    assert ds.SOPInstanceUID in str(err.value)
    series = _series(root, s)
    _, ds = series[4]
    ds.Rows, ds.PixelData = 32, ds.PixelData[: 32 * 64 * 2]
    with pytest.raises(InputError, match="is 32x64 pixels but"):
        read_volume(series)


def test_enhanced_multiframe_ct_reads_to_the_same_volume(cohort, tmp_path):
    root, _, studies = cohort
    s = _intact(studies)[1]
    folder = root / s["path"]
    single = read_volume(_series(root, s))
    full = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    cts = [ds for ds in full if ds.Modality == "CT"]
    random.Random(0).shuffle(cts)
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        cts, series_instance_uid=generate_uid(), series_number=9, sop_instance_uid=generate_uid(),
        instance_number=1)
    path = tmp_path / "enhanced.dcm"
    enhanced.save_as(path)
    found = scan_folder(str(tmp_path))
    (series,) = found.series
    assert series.kind == "ct" and len(series.instances) == 1 and int(series.first.NumberOfFrames) == len(cts)
    vol = read_volume([(i.name, i.ds) for i in series.instances])
    np.testing.assert_array_equal(vol.hu, single.hu)
    np.testing.assert_allclose(vol.affine_lps, single.affine_lps, atol=1e-9)
    np.testing.assert_allclose(vol.positions_mm, single.positions_mm, atol=1e-9)


def test_nifti_affine_agrees_between_nibabel_and_simpleitk(cohort, tmp_path):
    root, _, studies = cohort
    s = _intact(studies)[0]
    vol = read_volume(_series(root, s))
    path = tmp_path / "image.nii.gz"
    data = nifti_gz_bytes(vol.hu, vol.affine_ras, descrip="mmray CT HU")
    path.write_bytes(data)
    img = nib.load(path)
    dz, dy, dx = vol.spacing_mm_zyx
    assert img.header.get_zooms() == pytest.approx((dx, dy, dz))
    np.testing.assert_allclose(img.affine, vol.affine_ras, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(img.dataobj).transpose(2, 1, 0), vol.hu)
    assert img.header["descrip"].item() == b"mmray CT HU"
    itk = sitk.ReadImage(str(path))
    assert itk.GetSpacing() == pytest.approx((dx, dy, dz))
    assert itk.GetOrigin() == pytest.approx(vol.origin_mm, abs=1e-4)
    np.testing.assert_allclose(np.array(itk.GetDirection()).reshape(3, 3), vol.direction, atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(itk), vol.hu)
    raw = gzip.decompress(data)
    for value in s["phi"]:
        assert value.encode() not in raw
