"""Radiomics: mmray's features equal pyradiomics run directly on the same arrays and files."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import yaml
from radiomics import featureextractor

from mmray.errors import ConfigError
from mmray.features.radiomics import DEFAULT_PARAMS_PATH, compute_features, load_params, params_hash
from mmray.ingest.ct_volume import read_volume
from mmray.ingest.dicom_discovery import scan_folder
from mmray.ingest.seg import read_seg_mask
from mmray.synth.ct import synth_ct_volume

sys.path.insert(0, str(Path(__file__).parents[1] / "ingest"))
from ct_testdata import PROFILE, SEED, ct_patients, write_studies


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("rad")
    patient = ct_patients(4)[1]
    (s,) = write_studies(root, [patient])
    return root / s["path"], s, synth_ct_volume(patient, profile=PROFILE, seed=SEED)


def _direct(image: sitk.Image, mask: sitk.Image, params_file=DEFAULT_PARAMS_PATH) -> dict:
    """pyradiomics as its docs show it: an extractor from the params file, execute, drop diagnostics."""
    result = featureextractor.RadiomicsFeatureExtractor(str(params_file)).execute(image, mask)
    return {k: float(v) for k, v in result.items() if not k.startswith("diagnostics_")}


def _truth_images(truth):
    image = sitk.GetImageFromArray(truth.hu.astype(np.float32))
    mask = sitk.GetImageFromArray(truth.mask.astype(np.uint8))
    for img in (image, mask):
        img.SetSpacing(truth.spacing_mm_zyx[::-1])
        img.SetOrigin(truth.origin_mm)
    return image, mask


def test_default_params_give_the_107_standard_features(study):
    _, _, truth = study
    features, seconds = compute_features(truth.hu, truth.mask, spacing_mm_zyx=truth.spacing_mm_zyx,
                                         origin_mm=truth.origin_mm, direction=np.eye(3), params=load_params())
    assert len(features) == 107 and seconds > 0
    classes = Counter(name.split("_")[1] for name in features)
    assert classes == {"firstorder": 18, "shape": 14, "glcm": 24, "glrlm": 16, "glszm": 16, "gldm": 14, "ngtdm": 5}
    assert all(name.startswith("original_") for name in features)
    assert "original_firstorder_Mean" in features and not any(n.startswith("diagnostics") for n in features)
    assert features["original_firstorder_Mean"] == pytest.approx(truth.hu[truth.mask].mean())
    assert features["original_shape_VoxelVolume"] == pytest.approx(truth.mask.sum() * np.prod(truth.spacing_mm_zyx))


def test_features_equal_pyradiomics_run_directly_on_the_same_arrays(study):
    _, _, truth = study
    ours, _ = compute_features(truth.hu, truth.mask, spacing_mm_zyx=truth.spacing_mm_zyx,
                               origin_mm=truth.origin_mm, direction=np.eye(3), params=load_params())
    assert ours == _direct(*_truth_images(truth))


def test_dicom_pipeline_features_equal_the_reference_pipeline(study):
    folder, s, truth = study
    (pair,) = scan_folder(str(folder)).pairs
    volume = read_volume([(i.name, i.ds) for i in pair.ct.instances])
    seg = read_seg_mask(pair.seg_instance.path, volume, name="seg")
    ours, _ = compute_features(volume.hu, seg.mask, spacing_mm_zyx=volume.spacing_mm_zyx,
                               origin_mm=volume.origin_mm, direction=volume.direction, params=load_params())
    assert ours == _direct(*_truth_images(truth))  # DICOM round trip loses nothing
    reader = sitk.ImageSeriesReader()  # the reference pipeline reads the series with SimpleITK
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), s["series_uid"]))
    image = sitk.Cast(reader.Execute(), sitk.sitkFloat32)
    mask = sitk.GetImageFromArray(seg.mask)
    mask.CopyInformation(image)
    reference = _direct(image, mask)  # GDCM computes the slice spacing in floating point: last-bit differences
    assert reference.keys() == ours.keys()
    assert ours == pytest.approx(reference, rel=1e-9, abs=1e-12)


def test_params_file_and_hash(study, tmp_path):
    _, _, truth = study
    custom = tmp_path / "params.yaml"
    custom.write_text(yaml.safe_dump({"imageType": {"Original": {}}, "featureClass": {"firstorder": ["Mean", "Median"]},
                                      "setting": {"binWidth": 10, "label": 1}}))
    params = load_params(str(custom))
    features, _ = compute_features(truth.hu, truth.mask, spacing_mm_zyx=truth.spacing_mm_zyx,
                                   origin_mm=truth.origin_mm, direction=np.eye(3), params=params)
    assert sorted(features) == ["original_firstorder_Mean", "original_firstorder_Median"]
    default = load_params()
    assert default["setting"]["binWidth"] == 25 and default["setting"]["resampledPixelSpacing"] is None
    assert params_hash(default) == params_hash(load_params()) != params_hash(params)
    assert params_hash(default) != params_hash(default, extra={"segment_labels": ["tumor"]})
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"setting": {"binWidth": "wide"}, "featureClass": {"nosuchclass": []}}))
    with pytest.raises(ConfigError, match="not a valid pyradiomics parameter set"):
        load_params(str(bad))
    with pytest.raises(ConfigError, match="cannot read the pyradiomics params file"):
        load_params(str(tmp_path / "missing.yaml"))
