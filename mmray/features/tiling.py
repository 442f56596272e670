"""Tile grids at a target resolution: which pyramid level to read, where tiles and regions lie.

Two scales share one grid: ``tile_px`` tiles (e.g. 256 px) and ``region_px``
regions (e.g. 4096 px) at ``target_mpp`` micrometres per pixel.  In level-0
pixels a tile is ``tile_l0 = round(tile_px * target_mpp / mpp_l0)`` wide and a
region ``region_l0 = tile_l0 * region_px // tile_px``, so every tile lies in
exactly one region.  Tiles lie fully inside the slide; regions may run past its
edge (the part outside reads as white).  Coordinates are level-0 pixels of the
top-left corner.

Reading: a tile is read at the coarsest pyramid level whose downsample is at
most ``tile_l0 / tile_px`` (OpenSlide's ``get_best_level_for_downsample`` rule)
and resized to ``tile_px``; a region is read the same way at its own, much
coarser, downsample and resized to ``tile_px`` (the encoder resizes both to its
input size), so a 4096-px region never costs a 4096-px read.

Guards (:class:`PlanLimits`): a slide whose best (level-0) pyramid level is
coarser than ``max_upsample`` times the target, or whose plan holds more than
``max_tiles_per_slide`` tiles + regions, fails at planning time instead of
spending hours on interpolated pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from mmray.errors import InputError
from mmray.features.thumbnail import best_level  # noqa: F401  (tiling.best_level is API)
from mmray.features.tissue import (TissueParams, box_fractions, mask_from_saturation, mpp_of_thumbnail,
                                   read_saturation)
from mmray.ingest.slide_resolution import DEFAULT_MPP_RANGE


@dataclass(frozen=True)
class TilingSpec:
    """Where tiles go; part of the resume key (a change re-embeds every slide)."""

    target_mpp: float = 0.5
    tile_px: int = 256
    region_px: int = 4096  # 0: no regions
    min_tissue_fraction: float = 0.25
    mpp_override: float | None = None
    tissue: TissueParams = field(default_factory=TissueParams)


@dataclass(frozen=True)
class PlanLimits:
    """What a slide may ask for before it fails at planning time.

    Not part of the resume key: a limit never changes the plan of a slide that passes it.
    """

    min_mpp: float = DEFAULT_MPP_RANGE[0]  # plausible level-0 resolution, micrometres per pixel
    max_mpp: float = DEFAULT_MPP_RANGE[1]
    max_upsample: float = 1.5  # target_mpp may be at most this much finer than level 0
    max_tiles_per_slide: int = 200_000  # tiles + regions

    @property
    def mpp_range(self) -> tuple[float, float]:
        return self.min_mpp, self.max_mpp


def check_upsample(*, mpp_l0: float, spec: TilingSpec, limits: PlanLimits, name: str, mpp_from: str) -> None:
    """:class:`InputError` when tiles at ``spec.target_mpp`` would upsample level 0 more than allowed."""
    factor = mpp_l0 / spec.target_mpp
    if factor > limits.max_upsample * (1 + 1e-9):
        raise InputError(f"slide {name}: tiles at wsi.target_mpp={spec.target_mpp:g} um/px would upsample its best "
                         f"level {factor:.3g}x (level 0 is {mpp_l0:.4g} um/px, from {mpp_from}), more than "
                         f"wsi.max_upsample={limits.max_upsample:g}; if that resolution is right, set wsi.target_mpp "
                         f"to at least {mpp_l0 / limits.max_upsample:.3g} (or raise wsi.max_upsample), else correct "
                         f"it in the manifest's mpp column or wsi.mpp_override", item=name)


def check_plan_size(tiles: SlideTiles, *, limits: PlanLimits, name: str, mpp_from: str) -> None:
    """:class:`InputError` when ``tiles`` holds more tiles + regions than ``limits.max_tiles_per_slide``."""
    n_tiles, n_regions = len(tiles.tile_x), len(tiles.region_x)
    if n_tiles + n_regions > limits.max_tiles_per_slide:
        raise InputError(f"slide {name}: its plan has {n_tiles + n_regions:,} tiles+regions ({n_tiles:,} tiles, "
                         f"{n_regions:,} regions; {tiles.width_l0:,} x {tiles.height_l0:,} px at "
                         f"{tiles.mpp_l0:.4g} um/px from {mpp_from}), more than wsi.max_tiles_per_slide="
                         f"{limits.max_tiles_per_slide:,}; check the slide's resolution, or raise "
                         f"wsi.max_tiles_per_slide", item=name)


def read_plan(downsamples, *, extent_l0: int, out_px: int) -> tuple[int, int]:
    """``(level, read_px)``: read ``read_px`` square at ``level`` to cover ``extent_l0`` level-0 px."""
    level = best_level(downsamples, extent_l0 / out_px)
    return level, max(1, int(round(extent_l0 / downsamples[level])))


@dataclass
class SlideTiles:
    """The planned tiles and regions of one slide (arrays of equal length per scale)."""

    width_l0: int
    height_l0: int
    mpp_l0: float
    tile_l0: int
    region_l0: int  # 0 without regions
    tile_level: int
    tile_read_px: int
    region_level: int
    region_read_px: int
    tile_x: np.ndarray  # (T,) int64
    tile_y: np.ndarray
    tile_region: np.ndarray  # (T,) int64 region id, -1 without regions
    tile_tissue: np.ndarray  # (T,) float32 tissue fraction
    region_x: np.ndarray  # (R,)
    region_y: np.ndarray
    region_id: np.ndarray
    region_tissue: np.ndarray


def plan_tiles(*, width_l0: int, height_l0: int, mpp_l0: float, downsamples, mask: np.ndarray, mask_mpp: float,
               spec: TilingSpec) -> SlideTiles:
    """Tiles with at least ``spec.min_tissue_fraction`` tissue in ``mask``, and the regions holding them that
    have as much tissue themselves (a tile in a dropped region has region id -1)."""
    tile_l0 = max(1, int(round(spec.tile_px * spec.target_mpp / mpp_l0)))
    nx, ny = width_l0 // tile_l0, height_l0 // tile_l0
    gy, gx = np.meshgrid(np.arange(ny, dtype=np.int64), np.arange(nx, dtype=np.int64), indexing="ij")
    tx, ty = gx.ravel() * tile_l0, gy.ravel() * tile_l0  # row-major: y, then x
    scale = mpp_l0 / mask_mpp  # mask pixels per level-0 pixel
    frac = box_fractions(mask, x0=tx * scale, y0=ty * scale, size=tile_l0 * scale)
    keep = frac >= spec.min_tissue_fraction
    tx, ty, frac = tx[keep], ty[keep], frac[keep].astype(np.float32)
    tile_level, tile_read = read_plan(downsamples, extent_l0=tile_l0, out_px=spec.tile_px)
    empty = np.zeros(0, np.int64)
    if spec.region_px <= 0:
        return SlideTiles(width_l0, height_l0, mpp_l0, tile_l0, 0, tile_level, tile_read, 0, 0, tx, ty,
                          np.full(len(tx), -1, np.int64), frac, empty, empty, empty, np.zeros(0, np.float32))
    per_region = spec.region_px // spec.tile_px
    region_l0 = tile_l0 * per_region
    n_rx = -(-width_l0 // region_l0)
    rid = (ty // region_l0) * n_rx + tx // region_l0
    ids = np.unique(rid)
    rx, ry = (ids % n_rx) * region_l0, (ids // n_rx) * region_l0
    # A region may run past the slide's edge: its tissue fraction is over the part inside the slide, and a
    # region below the tissue threshold is never planned (so never embedded, aggregated or drawn).
    inside = (np.minimum(rx + region_l0, width_l0) - rx) * (np.minimum(ry + region_l0, height_l0) - ry)
    rfrac = box_fractions(mask, x0=rx * scale, y0=ry * scale, size=region_l0 * scale) * (region_l0**2 / inside)
    rfrac = np.minimum(rfrac, 1.0).astype(np.float32)
    tissue_ok = rfrac >= spec.min_tissue_fraction
    rid = np.where(np.isin(rid, ids[tissue_ok]), rid, -1)
    rx, ry, ids, rfrac = rx[tissue_ok], ry[tissue_ok], ids[tissue_ok], rfrac[tissue_ok]
    region_level, region_read = read_plan(downsamples, extent_l0=region_l0, out_px=spec.tile_px)
    return SlideTiles(width_l0, height_l0, mpp_l0, tile_l0, region_l0, tile_level, tile_read, region_level,
                      region_read, tx, ty, rid, frac, rx, ry, ids, rfrac)


def plan_slide(slide, *, mpp_l0: float, spec: TilingSpec, limits: PlanLimits | None = None, name: str = "",
               mpp_from: str = "openslide.mpp-x/-y") -> tuple[SlideTiles, np.ndarray, float]:
    """Tissue mask from a thumbnail, then :func:`plan_tiles`; returns ``(tiles, mask, mask_mpp)``.

    With ``limits``, the upsampling is checked before anything is read and the plan's size after
    (:class:`InputError` naming slide ``name`` and where ``mpp_l0`` came from, ``mpp_from``).
    """
    if limits is not None:
        check_upsample(mpp_l0=mpp_l0, spec=spec, limits=limits, name=name, mpp_from=mpp_from)
    thumb_mpp = mpp_of_thumbnail(slide, mpp_l0=mpp_l0, params=spec.tissue)
    # saturation read block by block and handed over, not kept: the mask pipeline drops it once filtered
    mask = mask_from_saturation(read_saturation(slide, mpp_l0=mpp_l0, params=spec.tissue)[0], mpp=thumb_mpp,
                                params=spec.tissue)
    w0, h0 = slide.level_dimensions[0]
    tiles = plan_tiles(width_l0=w0, height_l0=h0, mpp_l0=mpp_l0, downsamples=slide.level_downsamples,
                       mask=mask, mask_mpp=thumb_mpp, spec=spec)
    if limits is not None:
        check_plan_size(tiles, limits=limits, name=name, mpp_from=mpp_from)
    return tiles, mask, thumb_mpp


def read_tile(slide, *, x: int, y: int, level: int, read_px: int, out_px: int) -> np.ndarray:
    """(out_px, out_px, 3) uint8: ``read_px`` square at ``level`` from level-0 ``(x, y)``, resized.

    Transparent pixels (outside the scanned area) are composited onto white.
    """
    img = slide.read_region((int(x), int(y)), int(level), (int(read_px), int(read_px)))
    alpha = img.getchannel("A")
    if alpha.getextrema()[0] < 255:
        rgb = Image.new("RGB", img.size, (255, 255, 255))
        rgb.paste(img, mask=alpha)
    else:
        rgb = img.convert("RGB")
    if read_px != out_px:
        rgb = rgb.resize((out_px, out_px), Image.Resampling.BILINEAR)
    return np.asarray(rgb)
