"""The streaming pyramid writer: same bytes as tifffile's whole-array write, memory of a band, not a level."""

from __future__ import annotations

import dataclasses
import datetime as dt
import tracemalloc

import numpy as np
import openslide
import pytest
import tifffile

from mmray.synth.profiles import get_profile, parse_slide_px, with_slide_px
from mmray.synth.slide_writer import PyramidSpec, downsample_box, write_pyramid
from mmray.errors import ConfigError


def _tiles(level0: np.ndarray, tile: int, *, blank=None):
    """Row-major whole tiles of ``level0`` (zero past its edge); tiles equal to ``blank`` come as None."""
    h, w = level0.shape[:2]
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            t = np.zeros((tile, tile, 3), np.uint8)
            part = level0[y:y + tile, x:x + tile]
            t[:part.shape[0], :part.shape[1]] = part
            yield None if blank is not None and np.array_equal(t, blank) else t


def _reference(path, level0: np.ndarray, spec: PyramidSpec) -> None:
    """What the writer replaces: every level as a whole array through tifffile."""
    common = dict(dtype=np.uint8, tile=(spec.tile_px, spec.tile_px), photometric="rgb", compression="jpeg",
                  compressionargs={"level": spec.jpeg_quality}, resolutionunit="CENTIMETER", metadata=None)
    with tifffile.TiffWriter(path) as tif:
        tif.write(level0, resolution=(1e4 / spec.mpp, 1e4 / spec.mpp), subfiletype=0, description=spec.description,
                  software=spec.software, datetime=spec.datetime, **common)
        level = level0
        for k in range(1, spec.levels):
            level = downsample_box(level, spec.downsample)
            ppcm = 1e4 / (spec.mpp * spec.downsample**k)
            tif.write(level, resolution=(ppcm, ppcm), subfiletype=1, **common)


@pytest.mark.parametrize("width, height, tile, levels", [(1000, 700, 64, 4), (512, 512, 128, 3), (300, 1100, 32, 5)])
def test_streamed_pyramid_is_byte_identical_to_whole_array_writes(tmp_path, width, height, tile, levels):
    rng = np.random.default_rng(width)
    yy, xx = np.mgrid[:height, :width]
    level0 = np.stack([(xx * 255 // width), (yy * 255 // height), ((xx + yy) % 256)], -1).astype(np.uint8)
    blob = (yy - height / 2) ** 2 + (xx - width / 3) ** 2 < (min(width, height) / 4) ** 2
    level0[blob] = rng.integers(0, 255, (int(blob.sum()), 3), dtype=np.uint8)
    level0[:tile, :tile] = 240  # one background tile, given to the writer as None
    blank = np.full((tile, tile, 3), 240, np.uint8)
    spec = PyramidSpec(width_px=width, height_px=height, tile_px=tile, levels=levels, mpp=0.25,
                       description="test", datetime=dt.datetime(2020, 1, 2))
    stats = write_pyramid(tmp_path / "s.tiff", _tiles(level0, tile, blank=blank), spec=spec, background=blank)
    _reference(tmp_path / "ref.tiff", level0, spec)
    assert (tmp_path / "s.tiff").read_bytes() == (tmp_path / "ref.tiff").read_bytes()
    assert stats.level0_tiles == -(-width // tile) * -(-height // tile) and stats.background_tiles == 1
    assert not list(tmp_path.glob(".level*"))  # spools removed
    with openslide.OpenSlide(tmp_path / "s.tiff") as s:
        assert s.level_count == levels and s.level_dimensions[0] == (width, height)
        assert [spec.level_shape(k)[::-1] for k in range(levels)] == list(s.level_dimensions)
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.25)


def test_memory_is_a_band_not_a_level(tmp_path):
    """A tall slide: level 0 is 96 MiB and level 1 6 MiB of pixels; the writer holds ~0.2 MiB bands."""
    tile, width, height = 256, 1024, 32768
    pool = [np.full((tile, tile, 3), c, np.uint8) for c in ((200, 30, 90), (20, 160, 60), (90, 90, 220))]
    n = (width // tile) * (height // tile)
    spec = PyramidSpec(width_px=width, height_px=height, tile_px=tile, levels=3, mpp=0.25)
    tracemalloc.start()
    try:
        write_pyramid(tmp_path / "tall.tiff", (pool[i % 3] for i in range(n)), spec=spec, background=pool[0])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * 2**20, f"writer peak {peak / 2**20:.1f} MiB"
    with openslide.OpenSlide(tmp_path / "tall.tiff") as s:
        assert s.level_dimensions == ((1024, 32768), (256, 8192), (64, 2048))
        got = np.asarray(s.read_region((256, 512), 0, (256, 256)).convert("RGB")).astype(int)
    assert np.abs(got - pool[(2 * 4 + 1) % 3]).mean() < 3  # the tile at row 2, column 1


def test_wrong_tile_count_and_tile_size_are_refused(tmp_path):
    spec = PyramidSpec(width_px=128, height_px=128, tile_px=64, levels=2, mpp=0.5)
    bg = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="more tiles than.*needs 4"):
        write_pyramid(tmp_path / "a.tiff", iter([bg, bg, bg, bg, bg]), spec=spec, background=bg)
    with pytest.raises(ValueError, match="stopped after 3 tiles"):
        write_pyramid(tmp_path / "c.tiff", iter([bg, None, bg]), spec=spec, background=bg)
    with pytest.raises(ValueError, match="multiple of 16"):
        write_pyramid(tmp_path / "b.tiff", iter([]), spec=dataclasses.replace(spec, tile_px=40), background=bg)


def test_xl_profile_and_slide_px_override():
    xl = get_profile("xl")
    assert (xl.slide_width_px, xl.slide_height_px, xl.slide_mpp, xl.slide_tile_px) == (100_000, 80_000, 0.25, 256)
    assert parse_slide_px("25000,20000") == (25000, 20000) == parse_slide_px("25_000x20_000")
    small = with_slide_px(xl, (4096, 3072))
    assert (small.slide_width_px, small.slide_height_px, small.slide_levels) == (4096, 3072, xl.slide_levels)
    with pytest.raises(ConfigError, match="WIDTH,HEIGHT"):
        parse_slide_px("big")
