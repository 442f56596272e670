"""Downsampled pictures of a whole slide read block by block, never a whole pyramid level at once.

OpenSlide's ``get_thumbnail`` (and reading a level with one ``read_region``) decodes the whole level it
picks: on a 100,000 x 80,000 px slide without coarse levels that is gigabytes.  :func:`read_downsampled`
reads the same level in blocks of at most ``max_read_px`` square and area-averages each block into its
part of the output, so it holds the output plus one block; blocks follow the output grid, so every source
pixel is decoded once.

The filter is an exact box (area) average: output pixel ``i`` is the mean of the source over
``[i * f, (i + 1) * f)`` in level pixels, source pixels cut by that interval's ends weighted by the part
inside (prefix sums of the source, so the cost is linear in pixels).  It depends on global coordinates
only, so the picture is the same whatever the block size (exactly for whole-number factors; otherwise to
floating-point rounding); PIL's ``resize(box=...)`` per block is not (its box filter takes or leaves
whole source pixels, and rounding in the block offsets moves them between outputs).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

DEFAULT_BLOCK_PX = 512  # output pixels per block side (fewer when the source is much larger)
DEFAULT_MAX_READ_PX = 512  # largest side of one read_region (level pixels): 1 MiB of RGBA, ~8 MiB averaging


def best_level(downsamples, downsample: float, *, rel_tol: float = 1e-3) -> int:
    """The coarsest level whose downsample is at most ``downsample`` (0 if none is).

    OpenSlide's rule, with a relative tolerance so a level reported as 4.0002x
    still serves a 4x request.
    """
    best = 0
    for level, ds in enumerate(downsamples):
        if ds <= downsample * (1 + rel_tol):
            best = level
    return best


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """OpenSlide's RGBA (transparent where nothing was scanned) as RGB with white there."""
    rgb = np.ascontiguousarray(rgba[..., :3])
    empty = rgba[..., 3] == 0
    if empty.any():
        rgb[empty] = 255
    return rgb


def _area_axis(src: np.ndarray, edges: np.ndarray, axis: int) -> np.ndarray:
    """Box averages of ``src`` along ``axis`` between consecutive ``edges`` (source pixel coordinates)."""
    src = np.moveaxis(src, axis, 0)
    n = src.shape[0]
    prefix = np.zeros((n + 1,) + src.shape[1:], np.float64)
    np.cumsum(src, axis=0, dtype=np.float64, out=prefix[1:])
    idx = np.minimum(np.floor(edges).astype(np.int64), n - 1)
    frac = (edges - idx).reshape((-1,) + (1,) * (src.ndim - 1))
    at = prefix[idx] + frac * src[idx]  # the integral of the source from 0 to each edge
    out = (at[1:] - at[:-1]) / np.diff(edges).reshape((-1,) + (1,) * (src.ndim - 1))
    return np.moveaxis(out, 0, axis)


def read_downsampled(slide, *, downsample: float, size: tuple[int, int], block_px: int = DEFAULT_BLOCK_PX,
                     max_read_px: int = DEFAULT_MAX_READ_PX,
                     transform: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 picture of the whole ``slide`` at ``size = (W, H)``.

    It is the area average (module docstring) of the coarsest level at least as fine as ``downsample``
    (level-0 pixels per output pixel), stretched from that level's full extent to ``size``, read in
    blocks of at most ``max_read_px`` level pixels a side.  Transparent pixels (outside the scanned area)
    become white.  ``transform`` (pixel-wise, e.g. HSV saturation) is applied to each block of the
    picture, and the result is ``(H, W, ...)`` of whatever it returns: the RGB picture never exists whole.
    """
    width, height = int(size[0]), int(size[1])
    if width < 1 or height < 1:
        raise ValueError(f"size must be at least 1 x 1 px, got {size}")
    level = best_level(slide.level_downsamples, downsample)
    lds = float(slide.level_downsamples[level])
    lw, lh = slide.level_dimensions[level]
    fx, fy = lw / width, lh / height  # level pixels per output pixel
    step = max(1, min(block_px, int(max_read_px // max(fx, fy, 1.0))))
    out = None
    for oy in range(0, height, step):
        oh = min(step, height - oy)
        ey = np.minimum(np.arange(oy, oy + oh + 1) * fy, lh)  # output row edges in level pixels
        ry0, ry1 = int(math.floor(ey[0])), min(int(math.ceil(ey[-1])), lh)
        for ox in range(0, width, step):
            ow = min(step, width - ox)
            ex = np.minimum(np.arange(ox, ox + ow + 1) * fx, lw)
            rx0, rx1 = int(math.floor(ex[0])), min(int(math.ceil(ex[-1])), lw)
            region = slide.read_region((int(round(rx0 * lds)), int(round(ry0 * lds))), level,
                                       (max(1, rx1 - rx0), max(1, ry1 - ry0)))
            rgb = rgba_to_rgb(np.asarray(region))
            if (fx, fy) != (1.0, 1.0):
                rgb = _area_axis(_area_axis(rgb, ex - rx0, axis=1), ey - ry0, axis=0)
                rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
            block = rgb if transform is None else transform(rgb)
            if out is None:
                out = np.empty((height, width, *block.shape[2:]), block.dtype)
            out[oy:oy + oh, ox:ox + ow] = block
    return out


def thumbnail_size(width_l0: int, height_l0: int, *, max_px: int) -> tuple[tuple[int, int], float]:
    """``((W, H), downsample)`` of a thumbnail whose long side is ``max_px`` (OpenSlide's get_thumbnail size)."""
    ds = max(width_l0 / max_px, height_l0 / max_px, 1.0)
    return (max(1, int(round(width_l0 / ds))), max(1, int(round(height_l0 / ds)))), ds


def read_thumbnail_rgb(slide, *, max_px: int) -> np.ndarray:
    """A thumbnail whose long side is at most ``max_px``, read block by block (for reports and viewers)."""
    w0, h0 = slide.level_dimensions[0]
    size, ds = thumbnail_size(w0, h0, max_px=max_px)
    return read_downsampled(slide, downsample=ds, size=size)
