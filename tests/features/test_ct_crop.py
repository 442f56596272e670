"""Tumour-centred crops: physical size in mm, a sphere's diameter through resampling, HU window, edges."""

from __future__ import annotations

import numpy as np
import pytest

from mmray.errors import InputError
from mmray.features.ct_crop import CropSpec, tumour_crop

RADIUS_MM = 15.0


def sphere_volume(*, spacing_zyx, shape, centre_mm, radius_mm=RADIUS_MM, inside_hu=40.0, outside_hu=-800.0):
    """(hu float32, mask uint8) of a ball of ``radius_mm`` at ``centre_mm`` (z, y, x from voxel 0's centre)."""
    axes = [np.arange(n) * s for n, s in zip(shape, spacing_zyx)]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    inside = (z - centre_mm[0]) ** 2 + (y - centre_mm[1]) ** 2 + (x - centre_mm[2]) ** 2 <= radius_mm ** 2
    return np.where(inside, inside_hu, outside_hu).astype(np.float32), inside.astype(np.uint8)


def diameters_mm(mask: np.ndarray, spacing_mm: float) -> list[float]:
    """Extent of the mask along z, y and x through its centre voxel, in mm."""
    c = [n // 2 for n in mask.shape]
    lines = [mask[:, c[1], c[2]], mask[c[0], :, c[2]], mask[c[0], c[1], :]]
    return [float(line.sum()) * spacing_mm for line in lines]


@pytest.mark.parametrize("spacing_zyx", [(2.5, 0.7, 0.9), (0.8, 0.8, 0.8), (3.0, 1.5, 1.5)])
def test_a_spheres_diameter_in_mm_survives_resampling_to_the_crops_isotropic_grid(spacing_zyx):
    spacing_zyx = np.asarray(spacing_zyx)
    shape = tuple(int(np.ceil(90 / s)) for s in spacing_zyx)  # a 90 mm field of view whatever the spacing
    centre = np.array([44.3, 46.1, 43.7])  # between voxel centres on every grid
    hu, mask = sphere_volume(spacing_zyx=spacing_zyx, shape=shape, centre_mm=centre)
    spec = CropSpec(crop_mm=48.0, spacing_mm=1.0, window_hu=(-1000.0, 400.0))
    image, crop_mask = tumour_crop(hu, mask, spacing_mm_zyx=spacing_zyx, spec=spec)
    assert image.shape == crop_mask.shape == (48, 48, 48)
    for d in diameters_mm(crop_mask, spec.spacing_mm):  # 30 mm, to within one crop voxel (source edges are
        assert d == pytest.approx(2 * RADIUS_MM, abs=1.0 + 0.5 * spacing_zyx.max())  # half a source voxel off)
    ball_mm3 = 4 / 3 * np.pi * RADIUS_MM ** 3
    assert crop_mask.sum() * spec.spacing_mm ** 3 == pytest.approx(ball_mm3, rel=0.06)
    # centred: the crop's mask centroid sits on the crop centre (within half a voxel on each axis)
    np.testing.assert_allclose(np.argwhere(crop_mask).mean(axis=0), [23.5, 23.5, 23.5], atol=0.5)
    # HU window: 40 HU inside -> (40 + 1000) / 1400, -800 HU outside -> 200 / 1400
    assert image[24, 24, 24] == pytest.approx(1040 / 1400, abs=1e-5)
    assert image[0, 0, 0] == pytest.approx(200 / 1400, abs=1e-5)


@pytest.mark.parametrize("crop_mm,spacing_mm,n", [(64.0, 2.0, 32), (48.0, 1.5, 32), (50.0, 3.0, 17), (30.0, 1.0, 30)])
def test_crops_have_the_configured_physical_size(crop_mm, spacing_mm, n):
    spacing_zyx = np.array([2.5, 0.75, 0.75])
    hu, mask = sphere_volume(spacing_zyx=spacing_zyx, shape=(40, 160, 160), centre_mm=(50.0, 60.0, 60.0),
                             radius_mm=6.0)
    spec = CropSpec(crop_mm=crop_mm, spacing_mm=spacing_mm)
    image, crop_mask = tumour_crop(hu, mask, spacing_mm_zyx=spacing_zyx, spec=spec)
    assert spec.n_vox == n and image.shape == (n, n, n)
    # the crop's physical size: a 12 mm ball is 12 / spacing_mm voxels wide along every axis
    for d in diameters_mm(crop_mask, spacing_mm):
        assert d == pytest.approx(12.0, abs=spacing_mm + 0.4)


def test_outside_the_scan_is_air_and_an_empty_mask():
    spacing = (2.0, 2.0, 2.0)
    hu, mask = sphere_volume(spacing_zyx=spacing, shape=(20, 30, 30), centre_mm=(4.0, 30.0, 30.0), radius_mm=4.0)
    hu[:] = 400.0  # bright everywhere inside the scan
    image, crop_mask = tumour_crop(hu, mask, spacing_mm_zyx=spacing, spec=CropSpec(crop_mm=40.0, spacing_mm=2.0))
    # the tumour is 4 mm above the scan's first slice: the lower half of the crop lies outside it
    assert image[0].max() == 0.0 and crop_mask[0].sum() == 0  # -1000 HU (air) -> 0 after the window
    assert image[-1].min() == 1.0  # 400 HU -> the window's top


def test_window_clips_and_scales():
    hu = np.full((8, 8, 8), -3000.0, np.float32)
    hu[4:] = 3000.0
    mask = np.zeros_like(hu, np.uint8)
    mask[3:5, 3:5, 3:5] = 1
    image, _ = tumour_crop(hu, mask, spacing_mm_zyx=(1, 1, 1), spec=CropSpec(crop_mm=2.0, spacing_mm=1.0,
                                                                              window_hu=(-100.0, 100.0)))
    assert image.min() == 0.0 and image.max() == 1.0


def test_bad_inputs_say_what_is_wrong():
    hu = np.zeros((4, 4, 4), np.float32)
    with pytest.raises(InputError, match="tumour mask is empty"):
        tumour_crop(hu, np.zeros((4, 4, 4), np.uint8), spacing_mm_zyx=(1, 1, 1), spec=CropSpec())
    with pytest.raises(InputError, match="differ in shape"):
        tumour_crop(hu, np.ones((4, 4, 3), np.uint8), spacing_mm_zyx=(1, 1, 1), spec=CropSpec())
    with pytest.raises(InputError, match="three positive mm"):
        tumour_crop(hu, np.ones((4, 4, 4), np.uint8), spacing_mm_zyx=(1, 0, 1), spec=CropSpec())
    assert [f for f, _ in CropSpec(crop_mm=-1).validate()] == ["crop_mm"]
    assert [f for f, _ in CropSpec(crop_mm=600, spacing_mm=1).validate()] == ["crop_mm"]
    assert [f for f, _ in CropSpec(window_hu=(400.0, -1000.0)).validate()] == ["window_hu"]
