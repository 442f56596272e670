"""Slide heatmaps over the thumbnail: where the important extremum features and the MIL attention come from.

Both plots colour boxes in level-0 slide coordinates (tiles at 256 px,
regions at 4096 px, as the WSI stage cut them) scaled by the thumbnail's
downsample.  Pure drawing helpers here; the sections that pick the run's
patients and values are in :mod:`mmray.report.slide_sections`.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mmray import uri as uri_mod

log = logging.getLogger(__name__)


@dataclass
class Thumbnail:
    rgb: np.ndarray  # (H, W, 3) uint8
    downsample: tuple[float, float]  # level-0 pixels per thumbnail pixel, (x, y)
    note: str = ""  # why the picture is blank, when it is


def read_thumbnail(uri: str | None, *, max_px: int = 1024, extent: tuple[int, int] = (1, 1)) -> Thumbnail:
    """The slide's thumbnail through OpenSlide (``s3://`` slides are copied to a scratch folder first).

    When the slide cannot be read, a white canvas covering ``extent``
    (level-0 width, height: the boxes to draw) is returned with the reason.
    """
    if uri is None:
        return _blank(extent, max_px, "slide file unknown (not in the cohort manifest or the wsi_tiles lineage)")
    scratch = tempfile.mkdtemp(prefix="mmray-report-") if uri_mod.is_s3(uri) else None
    try:
        from mmray.ingest.slide_source import local_copy, open_slide

        path = local_copy(uri, scratch_dir=scratch) if scratch else local_copy(uri, scratch_dir="")
        with contextlib.closing(open_slide(path, name=uri)) as slide:
            from mmray.features.thumbnail import read_thumbnail_rgb

            w0, h0 = slide.level_dimensions[0]
            thumb = read_thumbnail_rgb(slide, max_px=max_px)  # block by block: never a whole level
        return Thumbnail(thumb, (w0 / thumb.shape[1], h0 / thumb.shape[0]))
    except Exception as e:  # noqa: BLE001  any unreadable slide: the boxes are still drawn, on a blank canvas
        log.warning("report: no thumbnail for %s: %s", uri, e)
        return _blank(extent, max_px, f"slide {uri} could not be read ({type(e).__name__}: {e})")
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def _blank(extent: tuple[int, int], max_px: int, note: str) -> Thumbnail:
    w0, h0 = max(1, int(extent[0])), max(1, int(extent[1]))
    ds = max(w0, h0) / max_px
    w, h = max(1, int(np.ceil(w0 / ds))), max(1, int(np.ceil(h0 / ds)))
    return Thumbnail(np.full((h, w, 3), 255, np.uint8), (ds, ds), note)


def heat_grid(boxes: pd.DataFrame, *, shape: tuple[int, int], downsample: tuple[float, float]) -> np.ndarray:
    """(H, W) float grid, NaN where no box; each box (``x, y, size, value`` in level-0 pixels) paints its value.

    Where boxes overlap (a tile inside a region) the larger value shows:
    colours stay values of single locations, never sums across scales.
    """
    h, w = shape
    dx, dy = downsample
    grid = np.full((h, w), np.nan)
    for x, y, size, value in boxes[["x", "y", "size", "value"]].itertuples(index=False):
        c0, r0 = int(np.floor(x / dx)), int(np.floor(y / dy))
        c1, r1 = int(np.ceil((x + size) / dx)), int(np.ceil((y + size) / dy))
        c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(max(c1, c0 + 1), w), min(max(r1, r0 + 1), h)
        if c0 >= w or r0 >= h:
            continue
        block = grid[r0:r1, c0:c1]
        grid[r0:r1, c0:c1] = np.where(np.isnan(block), value, np.fmax(block, value))
    return grid


def peak_level0(grid: np.ndarray, downsample: tuple[float, float]) -> tuple[float, float] | None:
    """Level-0 (x, y) of the centre of the grid's highest cell (None for an empty grid)."""
    if np.all(np.isnan(grid)):
        return None
    r, c = np.unravel_index(int(np.nanargmax(grid)), grid.shape)
    return (c + 0.5) * downsample[0], (r + 0.5) * downsample[1]


def heatmap_figure(thumb: Thumbnail, grid: np.ndarray, *, title: str, label: str, cmap: str = "inferno",
                   marks: pd.DataFrame | None = None):
    """The thumbnail with the grid over it (half transparent) and a colour bar; ``marks``: numbered boxes."""
    from matplotlib.patches import Rectangle

    from mmray.report.render import new_figure

    h, w = grid.shape
    fig = new_figure(6.0, 6.0 * h / w + 0.6 if w else 6.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(thumb.rgb, extent=(0, w, h, 0))
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, alpha=0.6, extent=(0, w, h, 0), interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.035, pad=0.02, label=label)
    if marks is not None:
        dx, dy = thumb.downsample
        for k, (x, y, size) in enumerate(marks[["x", "y", "size"]].itertuples(index=False), 1):
            ax.add_patch(Rectangle((x / dx, y / dy), size / dx, size / dy, fill=False, edgecolor="cyan", linewidth=1))
            ax.text(x / dx, y / dy, str(k), color="cyan", fontsize=7, va="bottom")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    return fig


def read_region(uri: str | None, *, x: int, y: int, size_l0: int, out_px: int) -> np.ndarray | None:
    """(out_px, out_px, 3) uint8 of the level-0 square at ``(x, y)`` of side ``size_l0`` (read at the
    pyramid level that suits it); None when the slide cannot be read (the caller says so)."""
    if uri is None:
        return None
    scratch = tempfile.mkdtemp(prefix="mmray-report-") if uri_mod.is_s3(uri) else None
    try:
        from mmray.features.tiling import read_plan, read_tile
        from mmray.ingest.slide_source import local_copy, open_slide

        path = local_copy(uri, scratch_dir=scratch) if scratch else local_copy(uri, scratch_dir="")
        with contextlib.closing(open_slide(path, name=uri)) as slide:
            level, read_px = read_plan(slide.level_downsamples, extent_l0=size_l0, out_px=out_px)
            return read_tile(slide, x=x, y=y, level=level, read_px=read_px, out_px=out_px)
    except Exception as e:  # noqa: BLE001  any unreadable slide: no zoom panel, the caller notes it
        log.warning("report: cannot read a region of %s: %s", uri, e)
        return None
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
