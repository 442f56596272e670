"""Resolution sanity and plan limits: slides that would waste hours fail at planning time, with the fix."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from wsi_testdata import generic_tiff, strip_resolution_tags, tiny_slides

from mmray.cohort import _check_manifest, manifest_mpp
from mmray.errors import InputError
from mmray.features.tiling import PlanLimits, TilingSpec, plan_slide
from mmray.ingest.slide_resolution import slide_mpp
from mmray.ingest.slide_source import open_slide

FIX = r"manifest's mpp column .* or wsi\.mpp_override=<micrometres per pixel>"


def mpp_of(path, **kw) -> float:
    with open_slide(str(path), name="S1") as s:
        return slide_mpp(s, name="S1", **kw)


@pytest.mark.parametrize("dpi, mpp", [(72, "352.8"), (96, "264.6"), (300, "84.67")])
def test_software_default_dpi_is_refused_with_the_value_and_the_fix(tmp_path, dpi, mpp):
    path = generic_tiff(tmp_path / f"photo{dpi}.tif", dpi=dpi)
    with open_slide(str(path), name="S1") as s:
        assert s.properties["openslide.vendor"] == "generic-tiff"
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(25400 / dpi)  # what OpenSlide believes
    with pytest.raises(InputError, match=rf"slide S1: its resolution is not a scanner's: openslide.mpp-x = {mpp} "
                                         rf"um/px comes from tiff.XResolution = {dpi} pixels per inch.*{FIX}") as e:
        mpp_of(path)
    assert e.value.item == "S1"


def test_no_unit_and_no_tags_are_refused_naming_what_the_file_has(tmp_path):
    unitless = generic_tiff(tmp_path / "unitless.tif", dpi=None)  # tifffile's default: 1 pixel per no unit
    with pytest.raises(InputError, match=r"slide S1 has no resolution metadata \(tiff.XResolution = 1, "
                                         r"tiff.YResolution = 1, tiff.ResolutionUnit = none: a resolution "
                                         rf"without a unit is no physical size\).*{FIX}"):
        mpp_of(unitless)
    bare = strip_resolution_tags(generic_tiff(tmp_path / "bare.tif"))
    with tifffile.TiffFile(bare) as tif:
        assert not {282, 283, 296} & set(tif.pages[0].tags.keys())
    with pytest.raises(InputError, match=rf"has no resolution metadata \(no openslide.mpp-x/-y, no TIFF "
                                         rf"resolution tags\).*{FIX}"):
        mpp_of(bare)


def test_manifest_mpp_beats_the_override_which_beats_the_file_and_each_is_range_checked(tmp_path):
    path = generic_tiff(tmp_path / "photo.tif")
    assert mpp_of(path, mpp_override=0.25) == 0.25
    assert mpp_of(path, mpp_override=0.25, manifest_mpp=0.5) == 0.5
    with pytest.raises(InputError, match=r"the manifest's mpp column gives 30 um/px, outside the plausible range "
                                         r"0.05-20 um/px \(wsi.min_mpp, wsi.max_mpp\)"):
        mpp_of(path, manifest_mpp=30.0)
    assert mpp_of(path, manifest_mpp=30.0, mpp_range=(0.05, 40.0)) == 30.0
    # a plausible file value passes; the same value outside a narrower range fails
    good = tiny_slides(tmp_path, n=1)[0]["path"]
    assert mpp_of(good) == pytest.approx(0.5)
    with pytest.raises(InputError, match=r"openslide.mpp-x = 0.5 um/px \(openslide.mpp-x = 0.5.*\) is outside the "
                                         rf"plausible range 1-20 um/px.*{FIX}"):
        mpp_of(good, mpp_range=(1.0, 20.0))


def test_out_of_range_tag_that_is_not_a_known_default_is_refused(tmp_path):
    path = tmp_path / "coarse.tif"  # 10 px/cm = 1000 um/px: a real unit, an impossible microscope
    img = np.full((256, 256, 3), 200, np.uint8)
    tifffile.imwrite(path, img, photometric="rgb", tile=(128, 128), metadata=None, resolution=(10, 10),
                     resolutionunit="CENTIMETER")
    with pytest.raises(InputError, match=r"openslide.mpp-x = 1000 um/px \(.*tiff.XResolution = 10.*\) is outside"):
        mpp_of(path)


def test_a_vendor_mpp_wins_over_default_dpi_tags(tmp_path):
    """Aperio files often carry 72-dpi TIFF tags; OpenSlide's mpp then comes from aperio.MPP and is kept."""
    path = tmp_path / "aperio.svs"
    img = np.full((512, 512, 3), 230, np.uint8)
    with tifffile.TiffWriter(path) as tif:
        tif.write(img, tile=(256, 256), photometric="rgb", compression="jpeg", metadata=None,
                  resolution=(72, 72), resolutionunit="INCH",
                  description="Aperio Image Library v12.0.0\r\n512x512 (256x256) JPEG Q=70|AppMag = 20|MPP = 0.4990")
    with open_slide(str(path), name="S1") as s:
        assert (s.properties["openslide.vendor"], s.properties["tiff.XResolution"]) == ("aperio", "72")
        assert slide_mpp(s, name="S1") == pytest.approx(0.499)


def test_upsampling_beyond_the_limit_and_oversized_plans_fail_before_any_tile(tmp_path):
    path = tiny_slides(tmp_path, n=1)[0]["path"]  # 2048 x 1536 px at 0.5 um/px
    limits = PlanLimits()
    with open_slide(path, name="S1") as s:
        ok, _, _ = plan_slide(s, mpp_l0=0.5, spec=TilingSpec(target_mpp=0.5 / 1.5), limits=limits, name="S1")
        assert len(ok.tile_x) > 0  # exactly the limit: allowed
        with pytest.raises(InputError, match=r"slide S1: tiles at wsi.target_mpp=0.25 um/px would upsample its best "
                                             r"level 2x \(level 0 is 0.5 um/px, from the manifest's mpp column\), "
                                             r"more than wsi.max_upsample=1.5; .* set wsi.target_mpp to at least "
                                             r"0.333"):
            plan_slide(s, mpp_l0=0.5, spec=TilingSpec(target_mpp=0.25), limits=limits, name="S1",
                       mpp_from="the manifest's mpp column")
        spec = TilingSpec(target_mpp=0.5, tile_px=32, region_px=0, min_tissue_fraction=0.0)
        full, _, _ = plan_slide(s, mpp_l0=0.5, spec=spec, limits=PlanLimits(max_tiles_per_slide=3072), name="S1")
        assert len(full.tile_x) == 64 * 48  # at the limit: allowed
        with pytest.raises(InputError, match=r"slide S1: its plan has 3,072 tiles\+regions \(3,072 tiles, 0 regions; "
                                             r"2,048 x 1,536 px at 0.5 um/px from openslide.mpp-x/-y\), more than "
                                             r"wsi.max_tiles_per_slide=3,071"):
            plan_slide(s, mpp_l0=0.5, spec=spec, limits=PlanLimits(max_tiles_per_slide=3071), name="S1")


def test_manifest_mpp_column_is_parsed_and_validated(tmp_path):
    assert manifest_mpp(" 0.25 ") == 0.25 and manifest_mpp("") is None and manifest_mpp(None) is None
    for bad in ("abc", "-1", "0", "nan", "inf"):
        with pytest.raises(ValueError, match=rf"mpp '{bad}' is not a resolution; give the slide's level-0 "
                                             r"micrometres per pixel as a positive number"):
            manifest_mpp(bad)
    (tmp_path / "a.tif").write_bytes(b"x")
    (tmp_path / "manifest.csv").write_text("patient_id,modality,path,mpp\nP1,wsi,a.tif,0.5\nP2,wsi,a.tif,\n"
                                           "P3,wsi,a.tif,20x\n")
    problems = _check_manifest(str(tmp_path / "manifest.csv"))
    assert [p for p, _ in problems] == ["manifest (manifest.csv line 4)"]
    assert problems[0][1].startswith("mpp '20x' is not a resolution")
