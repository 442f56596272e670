"""Tissue detection and tile grids: masks, background exclusion, pyramid levels, resolution errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import openslide
import pytest

from mmray.errors import InputError
from mmray.features.tiling import TilingSpec, best_level, plan_slide, plan_tiles, read_plan
from mmray.features.tissue import (TissueParams, box_fractions, detect_tissue, fill_small_holes, remove_small_objects,
                                   rgba_to_rgb, saturation)
from mmray.ingest.slide_source import open_slide, slide_mpp
from mmray.synth.latent import sample_patients
from mmray.synth.profiles import get_profile
from mmray.synth.slides import write_slides

TINY = get_profile("tiny")
GLASS = (240, 240, 238)
PINK = (200, 120, 170)


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Three tiny-profile slides (2048 x 1536 px at 0.5 mpp, levels 1x/4x/16x)."""
    out = tmp_path_factory.mktemp("tissue") / "slides"
    patients = [dataclasses.replace(p, n_slides=1, corruptions=[]) for p in sample_patients(3, profile=TINY, seed=4)]
    return [out.parent / r["path"] for r in write_slides(patients, out_dir=out, profile=TINY, seed=4)]


def glass(h=96, w=128) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.clip(np.array(GLASS) + rng.normal(0, 1.5, (h, w, 3)), 0, 255).astype(np.uint8)


def test_saturation_is_hsv_saturation():
    px = np.array([[[255, 0, 0], [100, 100, 100], [200, 100, 50], [0, 0, 0]]], np.uint8)
    np.testing.assert_allclose(saturation(px)[0], [1.0, 0.0, 0.75, 0.0], atol=1e-6)


def test_detect_tissue_finds_a_stained_disc_and_ignores_glass_and_specks():
    img = glass()
    yy, xx = np.mgrid[:96, :128]
    disc = (yy - 48) ** 2 + (xx - 40) ** 2 < 20 ** 2
    img[disc] = PINK
    img[10:12, 110:112] = PINK  # a 2x2 speck of dust: 4 px * 64 um2 < min_object_um2
    hole = (yy - 48) ** 2 + (xx - 40) ** 2 < 3 ** 2
    img[hole] = GLASS  # a small lumen inside the tissue: filled
    mask = detect_tissue(img, mpp=8.0, params=TissueParams())
    assert mask[disc].mean() > 0.97 and mask[hole].all()
    assert not mask[~disc].any()
    assert not detect_tissue(glass(), mpp=8.0).any()  # blank glass: the saturation floor keeps it empty


def test_morphology_helpers():
    m = np.zeros((20, 20), bool)
    m[2:4, 2:4] = True  # 4 px
    m[10:18, 10:18] = True  # 64 px with a 4 px hole
    m[13:15, 13:15] = False
    kept = remove_small_objects(m, min_px=5)
    assert not kept[2:4, 2:4].any() and kept[10:13, 10:18].all()
    filled = fill_small_holes(m, max_px=4)
    assert filled[13:15, 13:15].all() and not filled[0, 0]
    assert not fill_small_holes(m, max_px=3)[13:15, 13:15].any()


def test_box_fractions_counts_mask_pixels_and_treats_outside_as_background():
    mask = np.zeros((8, 8), bool)
    mask[:4, :4] = True
    fr = box_fractions(mask, x0=np.array([0, 2, 4, 6]), y0=np.array([0, 2, 0, 6]), size=4)
    np.testing.assert_allclose(fr, [1.0, 0.25, 0.0, 0.0])
    assert box_fractions(mask, x0=np.array([-2]), y0=np.array([-2]), size=4)[0] == pytest.approx(0.25)


def test_best_level_is_the_coarsest_level_at_most_the_downsample():
    ds = (1.0, 4.0, 16.0, 32.0)
    cases = {0.5: 0, 1.0: 0, 2.0: 0, 3.99: 0, 4.0: 1, 4.0001: 1, 15.0: 1, 16.0: 2, 31.9: 2, 32.0: 3, 500.0: 3}
    assert {d: best_level(ds, d) for d in cases} == cases
    assert best_level((1.0, 4.0002, 16.001), 4.0) == 1  # rounding in reported downsamples is tolerated


def test_best_level_matches_openslide(slides):
    with openslide.OpenSlide(slides[0]) as s:
        for d in (0.7, 1.0, 1.5, 3.5, 4.5, 8.0, 15.5, 17.0, 64.0):
            assert best_level(s.level_downsamples, d) == s.get_best_level_for_downsample(d), d


@pytest.mark.parametrize("target_mpp, level, read_px, tile_l0", [
    (0.5, 0, 256, 256),  # level 0 as is
    (1.0, 0, 512, 512),  # level 0, 512 px read and halved (no 2x level exists)
    (2.0, 1, 256, 1024),  # level 1 (4x) as is
    (4.0, 1, 512, 2048),  # level 1, halved
    (8.0, 2, 256, 4096),  # level 2 (16x)
])
def test_read_plan_chooses_level_and_resize(target_mpp, level, read_px, tile_l0):
    tile_l0_got = round(256 * target_mpp / 0.5)
    assert tile_l0_got == tile_l0
    assert read_plan((1.0, 4.0, 16.0), extent_l0=tile_l0, out_px=256) == (level, read_px)


def test_grid_coordinates_regions_and_background_exclusion(slides):
    spec = TilingSpec(target_mpp=0.5, tile_px=256, region_px=1024, min_tissue_fraction=0.5)
    for path in slides:
        with openslide.OpenSlide(path) as s:
            tiles, mask, mask_mpp = plan_slide(s, mpp_l0=slide_mpp(s, name="x"), spec=spec)
            level1 = rgba_to_rgb(np.asarray(s.read_region((0, 0), 1, s.level_dimensions[1])))
        assert mask_mpp == pytest.approx(8.0) and mask.shape == (96, 128)
        assert tiles.tile_l0 == 256 and tiles.region_l0 == 1024 and tiles.tile_level == 0
        assert (tiles.tile_x % 256 == 0).all() and (tiles.tile_y % 256 == 0).all()
        assert (tiles.tile_x + 256 <= 2048).all() and (tiles.tile_y + 256 <= 1536).all()
        # every tile lies inside its region (-1: its region has too little tissue); every region holds a tile
        rx = dict(zip(tiles.region_id.tolist(), tiles.region_x.tolist()))
        ry = dict(zip(tiles.region_id.tolist(), tiles.region_y.tolist()))
        for x, y, r in zip(tiles.tile_x, tiles.tile_y, tiles.tile_region):
            assert r == -1 or (rx[r] <= x < rx[r] + 1024 and ry[r] <= y < ry[r] + 1024)
        assert set(tiles.tile_region.tolist()) - {-1} == set(tiles.region_id.tolist())
        # pixel truth from level 1 (4x): glass is light, tissue is stained
        truth = level1.min(axis=2) < 225

        def frac(x, y):
            return truth[y // 4:(y + 256) // 4, x // 4:(x + 256) // 4].mean()

        kept = set(zip(tiles.tile_x.tolist(), tiles.tile_y.tolist()))
        assert kept and min(frac(x, y) for x, y in kept) > 0.3
        empty = [(x, y) for y in range(0, 1536, 256) for x in range(0, 2048, 256) if frac(x, y) < 0.05]
        assert empty and not kept & set(empty), "background tiles must be excluded"
        for corner in ((0, 0), (1792, 0), (0, 1280), (1792, 1280)):  # the synthetic corners are glass
            assert corner not in kept
        # regions hold tissue too: pixel truth over each kept region's part inside the slide
        for x, y in zip(tiles.region_x.tolist(), tiles.region_y.tolist()):
            assert truth[y // 4:(y + 1024) // 4, x // 4:(x + 1024) // 4].mean() > 0.3


def test_regions_on_background_are_absent_even_when_a_tile_of_theirs_has_tissue():
    """A 4x4-tile region whose only tissue is one tile is background: never planned, so never embedded."""
    mask = np.zeros((16, 16), bool)  # 1 mask px = 64 level-0 px; the slide is 1024 x 1024 (4 x 4 tiles)
    mask[0:4, 0:4] = True  # region (0, 0) of 512 px: only its first tile has tissue (1/4 of the region)
    mask[8:16, 8:16] = True  # region (512, 512): all tissue
    spec = TilingSpec(target_mpp=1.0, tile_px=128, region_px=256, min_tissue_fraction=0.5)
    t = plan_tiles(width_l0=1024, height_l0=1024, mpp_l0=0.5, downsamples=(1.0,), mask=mask, mask_mpp=32.0,
                   spec=spec)
    assert sorted(zip(t.region_x.tolist(), t.region_y.tolist())) == [(512, 512)]
    assert (t.region_tissue >= 0.5).all()
    assert (0, 0) in set(zip(t.tile_x.tolist(), t.tile_y.tolist()))  # the tissue tile itself is kept
    assert t.tile_region[(t.tile_x == 0) & (t.tile_y == 0)].tolist() == [-1]
    assert set(t.tile_region.tolist()) - {-1} == set(t.region_id.tolist())


def test_region_past_the_slide_edge_counts_tissue_over_its_part_inside():
    mask = np.ones((10, 10), bool)  # all tissue; the slide (640 px) is smaller than one region (1024 px)
    spec = TilingSpec(target_mpp=1.0, tile_px=128, region_px=512, min_tissue_fraction=0.5)
    t = plan_tiles(width_l0=640, height_l0=640, mpp_l0=0.5, downsamples=(1.0,), mask=mask, mask_mpp=32.0, spec=spec)
    assert len(t.region_x) == 1 and t.region_tissue[0] == pytest.approx(1.0)


def test_plan_tiles_without_regions_and_with_min_fraction_zero():
    mask = np.zeros((10, 10), bool)
    spec = TilingSpec(target_mpp=1.0, tile_px=128, region_px=0, min_tissue_fraction=0.0)
    t = plan_tiles(width_l0=1000, height_l0=600, mpp_l0=0.5, downsamples=(1.0, 4.0), mask=mask, mask_mpp=50.0,
                   spec=spec)
    assert t.tile_l0 == 256 and len(t.tile_x) == 3 * 2 and (t.tile_region == -1).all() and len(t.region_x) == 0


def test_missing_resolution_is_a_clear_error_unless_overridden(tmp_path):
    import tifffile

    path = tmp_path / "nompp.tiff"
    img = np.full((512, 512, 3), 230, np.uint8)
    with tifffile.TiffWriter(path) as tif:
        tif.write(img, tile=(256, 256), photometric="rgb", compression="jpeg", metadata=None)
        tif.write(img[::4, ::4], tile=(128, 128), photometric="rgb", compression="jpeg", subfiletype=1,
                  metadata=None)
    with open_slide(str(path), name="S-NOMPP") as s:
        with pytest.raises(InputError, match=r"slide S-NOMPP has no resolution metadata.*wsi.mpp_override"):
            slide_mpp(s, name="S-NOMPP")
        assert slide_mpp(s, name="S-NOMPP", mpp_override=0.25) == 0.25


def test_unreadable_file_is_an_input_error(tmp_path):
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"not a slide" * 100)
    with pytest.raises(InputError, match="OpenSlide cannot open .*bad.svs"):
        open_slide(str(bad), name="bad")
