"""Whole-slide pictures read block by block: an exact area average, the same whatever the block size."""

from __future__ import annotations

import dataclasses

import numpy as np
import openslide
import pytest

from mmray.features.thumbnail import read_downsampled, read_thumbnail_rgb, rgba_to_rgb, thumbnail_size
from mmray.synth.latent import sample_patients
from mmray.synth.profiles import get_profile
from mmray.synth.slides import write_slides

TINY = get_profile("tiny")  # 2048 x 1536 px, levels 1x / 4x / 16x


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    out = tmp_path_factory.mktemp("thumb") / "slides"
    patient = dataclasses.replace(sample_patients(1, profile=TINY, seed=6)[0], n_slides=1, corruptions=[])
    rec = write_slides([patient], out_dir=out, profile=TINY, seed=6)[0]
    with openslide.OpenSlide(out.parent / rec["path"]) as s:
        yield s


def _level(s, level: int) -> np.ndarray:
    return rgba_to_rgb(np.asarray(s.read_region((0, 0), level, s.level_dimensions[level])))


@pytest.mark.parametrize("downsample, size, level, factor", [
    (8.0, (256, 192), 1, 2),  # level 1 (4x) halved
    (16.0, (128, 96), 2, 1),  # level 2 as is
    (2.0, (1024, 768), 0, 2),
    (32.0, (64, 48), 2, 2),
])
def test_whole_number_factors_equal_the_block_mean_of_the_level(slide, downsample, size, level, factor):
    whole = _level(slide, level).astype(np.float64)
    h, w = size[1], size[0]
    ref = np.rint(whole[:h * factor, :w * factor].reshape(h, factor, w, factor, 3).mean(axis=(1, 3)))
    for block_px, max_read_px in ((512, 1024), (50, 200)):
        got = read_downsampled(slide, downsample=downsample, size=size, block_px=block_px, max_read_px=max_read_px)
        assert got.shape == (h, w, 3) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, ref.astype(np.uint8))


@pytest.mark.parametrize("downsample, size", [(5.3, (386, 290)), (7.7, (266, 199)), (100.0, (20, 15))])
def test_any_factor_is_the_same_for_every_block_size(slide, downsample, size):
    ref = read_downsampled(slide, downsample=downsample, size=size, block_px=10**6, max_read_px=10**6)
    for block_px, max_read_px in ((512, 1024), (13, 40), (64, 64)):
        got = read_downsampled(slide, downsample=downsample, size=size, block_px=block_px, max_read_px=max_read_px)
        assert np.abs(got.astype(int) - ref).max() <= 1
    # an area average keeps the mean colour of the level it comes from
    level = _level(slide, 1 if downsample < 16 else 2)
    assert np.abs(ref.reshape(-1, 3).mean(0) - level.reshape(-1, 3).mean(0)).max() < 1.0


def test_thumbnail_size_follows_openslide(slide):
    assert thumbnail_size(2048, 1536, max_px=256) == ((256, 192), 8.0)
    assert thumbnail_size(100, 50, max_px=1024) == ((100, 50), 1.0)  # never upsampled
    assert read_thumbnail_rgb(slide, max_px=200).shape == (150, 200, 3)
