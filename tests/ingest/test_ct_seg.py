"""DICOM SEG -> mask on the CT grid: cropped SEGs, segment choice, refused geometry."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
from ct_testdata import PROFILE, SEED, ct_patients, write_studies
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from mmray.errors import InputError
from mmray.ingest.ct_volume import read_volume
from mmray.ingest.dicom_discovery import scan_folder
from mmray.ingest.seg import place_frames, read_seg, read_seg_mask
from mmray.synth.ct import TISSUE_CODE, synth_ct_volume


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("ctseg")
    patients = ct_patients(6, corrupt=("seg_geometry_mismatch",))
    studies = write_studies(root, patients)
    return root, {p.patient_id: p for p in patients}, {s["patient_id"]: s for s in studies}


def _load(root, study):
    (pair,) = scan_folder(str(root / study["path"])).pairs
    volume = read_volume([(i.name, i.ds) for i in pair.ct.instances])
    return pair, volume


def _intact(studies):
    return [s for s in studies.values() if s["corrupt"] is None]


def test_cropped_seg_lands_on_the_right_slices(cohort):
    root, patients, studies = cohort
    for s in _intact(studies):
        pair, volume = _load(root, s)
        seg = read_seg_mask(pair.seg_instance.path, volume, name=pair.seg_instance.name)
        first, last = s["tumour_slices"]
        assert seg.n_frames == last - first + 1 < s["n_slices"]  # the SEG holds tumour slices only
        assert seg.voxels == s["tumour_voxels"]
        zz, yy, xx = np.nonzero(seg.mask)
        assert [zz.mean(), yy.mean(), xx.mean()] == pytest.approx(s["tumour_centroid_zyx"])
        assert seg.slice_range == (first, last)
        truth = synth_ct_volume(patients[s["patient_id"]], profile=PROFILE, seed=SEED)
        np.testing.assert_array_equal(seg.mask, truth.mask.astype(np.uint8))
        parsed = read_seg_mask(pair.seg_instance.path, volume, name=pair.seg_instance.name,
                               dataset=pair.seg_instance.ds)  # the dataset discovery parsed, as ingest uses it
        np.testing.assert_array_equal(parsed.mask, seg.mask)
        assert seg.segment_labels == ("Tumor",) and seg.mask.dtype == np.uint8


def test_seg_whose_geometry_matches_no_slice_is_refused_with_positions(cohort):
    root, _, studies = cohort
    s = next(s for s in studies.values() if s["corrupt"] == "seg_geometry_mismatch")
    pair, volume = _load(root, s)
    n = s["tumour_slices"][1] - s["tumour_slices"][0] + 1
    with pytest.raises(InputError, match=f"{n} of {n} frame\\(s\\) match no CT slice within 0.1 mm") as err:
        read_seg_mask(pair.seg_instance.path, volume, name=pair.seg_instance.name)
    message = str(err.value)
    top = volume.positions_mm[-1]
    shift = s["corrupt_detail"]["seg_shift_z_mm"]
    z_frame = volume.positions_mm[s["tumour_slices"][1], 2] + shift  # highdicom writes frames by descending z
    assert f"nearest CT slice {s['n_slices'] - 1} at ({top[0]:.2f}, {top[1]:.2f}, {top[2]:.2f})" in message
    assert f"{z_frame:.2f})" in message and err.value.stage == "segmentation"


def test_seg_in_another_frame_of_reference_is_refused(cohort):
    root, _, studies = cohort
    s = _intact(studies)[0]
    pair, volume = _load(root, s)
    seg = read_seg(pair.seg_instance.path, name="seg.dcm")
    with pytest.raises(InputError, match="another frame of reference"):
        place_frames(seg, volume, name="seg.dcm", frame_of_reference_uid=generate_uid())


def _ct_datasets(root, study):
    files = sorted((root / study["path"]).glob("*.dcm"))
    return sorted((ds for ds in map(pydicom.dcmread, files) if ds.Modality == "CT"),
                  key=lambda ds: float(ds.ImagePositionPatient[2]))


def _write_seg(cts, path, tissue, *, fractional: bool):
    """A SEG with segments Tumor (1) and Lung (2) over ``cts``, empty frames omitted."""
    algo = hd.AlgorithmIdentificationSequence(name="test", family=codes.cid7162.ArtificialIntelligence,
                                              version="1")

    def desc(number, label, prop):
        return hd.seg.SegmentDescription(
            segment_number=number, segment_label=label,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=prop, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo)
    tumour = tissue == TISSUE_CODE["tumour"]
    lung = tissue == TISSUE_CODE["lung"]
    pixels = np.stack([tumour, lung], axis=-1)
    pixels = pixels.astype(np.float32) * 0.8 if fractional else pixels.astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=cts, pixel_array=pixels,
        segmentation_type=(hd.seg.SegmentationTypeValues.FRACTIONAL if fractional
                           else hd.seg.SegmentationTypeValues.BINARY),
        segment_descriptions=[desc(1, "Tumor", codes.SCT.Neoplasm), desc(2, "Lung", codes.SCT.Lung)],
        series_instance_uid=generate_uid(), series_number=301, sop_instance_uid=generate_uid(),
        instance_number=1, manufacturer="test", manufacturer_model_name="test", software_versions="1",
        device_serial_number="0", omit_empty_frames=True)
    seg.save_as(path)
    return tumour, lung


@pytest.mark.parametrize("fractional", [False, True], ids=["binary", "fractional"])
def test_segments_are_chosen_by_label(cohort, tmp_path, fractional):
    root, patients, studies = cohort
    s = _intact(studies)[0]
    _, volume = _load(root, s)
    cts, path = _ct_datasets(root, s), tmp_path / "two.dcm"
    truth = synth_ct_volume(patients[s["patient_id"]], profile=PROFILE, seed=SEED)
    tumour, lung = _write_seg(cts, path, truth.tissue, fractional=fractional)
    only = read_seg_mask(str(path), volume, name="two.dcm", labels=("tumor",))  # labels are case-insensitive
    np.testing.assert_array_equal(only.mask, tumour)
    assert only.segment_labels == ("Tumor",) and only.segment_numbers == (1,)
    both = read_seg_mask(str(path), volume, name="two.dcm")
    np.testing.assert_array_equal(both.mask, tumour | lung)
    assert both.segment_labels == ("Tumor", "Lung")
    with pytest.raises(InputError, match=r"no segment labelled \['Liver'\]; its segments: \['Lung', 'Tumor'\]"):
        read_seg_mask(str(path), volume, name="two.dcm", labels=("Liver",))
