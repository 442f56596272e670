"""Tissue detection on a slide thumbnail: Otsu on HSV saturation plus morphology.

Glass is bright and grey (saturation near 0); stained tissue is coloured.  The
mask is ``saturation > max(otsu(saturation), min_saturation)`` after a median
filter, then closed (bridges gaps between nearby tissue), opened (drops specks
and thin debris), holes smaller than ``max_hole_um2`` filled (gland lumens,
fat) and objects smaller than ``min_object_um2`` removed.  Sizes are given in
micrometres so one setting works at any thumbnail resolution.

All functions take and return numpy arrays; no I/O except :func:`read_thumbnail`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage import filters

from mmray.features.thumbnail import read_downsampled, rgba_to_rgb  # noqa: F401  (rgba_to_rgb is API here)


@dataclass(frozen=True)
class TissueParams:
    """Tissue detection settings (the ``wsi.tissue`` section of the ingest YAML)."""

    thumbnail_mpp: float = 8.0  # resolution the mask is computed at (micrometres per pixel)
    thumbnail_max_px: int = 8192  # cap on the thumbnail's long side
    median_px: int = 5  # median filter of the saturation, in thumbnail pixels (0/1: none)
    min_saturation: float = 0.05  # floor under the Otsu threshold (a slide with no tissue stays empty)
    saturation_threshold: float | None = None  # fixed threshold instead of Otsu
    close_um: float = 24.0  # closing radius
    open_um: float = 16.0  # opening radius
    max_hole_um2: float = 40000.0  # holes up to this area are filled (0: none)
    min_object_um2: float = 20000.0  # tissue pieces below this area are dropped

    def validate(self):
        if self.thumbnail_mpp <= 0:
            yield ("thumbnail_mpp", f"must be positive, got {self.thumbnail_mpp}")
        if self.thumbnail_max_px < 64:
            yield ("thumbnail_max_px", f"must be at least 64, got {self.thumbnail_max_px}")
        if self.median_px < 0:
            yield ("median_px", f"must be 0 or more, got {self.median_px}")
        if not 0 <= self.min_saturation < 1:
            yield ("min_saturation", f"must be in [0, 1), got {self.min_saturation}")
        if self.saturation_threshold is not None and not 0 <= self.saturation_threshold < 1:
            yield ("saturation_threshold", f"must be in [0, 1) or null (Otsu), got {self.saturation_threshold}")
        for name in ("close_um", "open_um", "max_hole_um2", "min_object_um2"):
            if getattr(self, name) < 0:
                yield (name, f"must be 0 or more, got {getattr(self, name)}")


def saturation(rgb: np.ndarray, *, rows_per_chunk: int = 256) -> np.ndarray:
    """HSV saturation ``(max - min) / max`` of an (H, W, 3) uint8 image, as float32 in [0, 1].

    Computed ``rows_per_chunk`` rows at a time into the output, so the float temporaries are a few rows,
    not five copies of the image (a 3,125 x 2,500 thumbnail: 31 MB instead of ~160 MB at peak).
    """
    rgb = np.asarray(rgb)
    out = np.empty(rgb.shape[:2], np.float32)
    for y in range(0, rgb.shape[0], rows_per_chunk):
        part = rgb[y:y + rows_per_chunk]
        hi = part.max(axis=2).astype(np.float32)
        lo = part.min(axis=2).astype(np.float32)
        out[y:y + rows_per_chunk] = np.where(hi > 0, (hi - lo) / np.maximum(hi, 1.0), 0.0)
    return out


def saturation_threshold(sat: np.ndarray, params: TissueParams) -> float:
    """The threshold :func:`detect_tissue` uses on ``sat``."""
    if params.saturation_threshold is not None:
        return float(params.saturation_threshold)
    if float(sat.max()) - float(sat.min()) < 1e-6:
        return max(float(sat.max()), params.min_saturation)  # uniform image: no tissue above the floor
    return max(float(filters.threshold_otsu(sat)), params.min_saturation)


def detect_tissue(rgb: np.ndarray, *, mpp: float, params: TissueParams = TissueParams()) -> np.ndarray:
    """Boolean (H, W) tissue mask of an (H, W, 3) uint8 thumbnail at ``mpp`` micrometres per pixel.

    (:func:`mask_from_saturation` of its :func:`saturation`.)
    """
    return mask_from_saturation(saturation(rgb), mpp=mpp, params=params)


def mask_from_saturation(sat: np.ndarray, *, mpp: float, params: TissueParams = TissueParams()) -> np.ndarray:
    """Boolean (H, W) tissue mask from the (H, W) float32 HSV saturation of a thumbnail (see the module doc).

    A caller that passes ``sat`` without keeping a reference lets it go once it is median-filtered
    (:func:`mmray.features.tiling.plan_slide` does: the peak is then two float32 images of the thumbnail).
    """
    if params.median_px > 1:
        sat = ndimage.median_filter(sat, size=params.median_px, mode="nearest")
    mask = sat > saturation_threshold(sat, params)
    del sat
    close_px = int(round(params.close_um / mpp))
    if close_px >= 1:
        pad = close_px  # closing near the border must not be clipped by the image edge
        mask = ndimage.binary_closing(np.pad(mask, pad), structure=_disk(close_px))[pad:-pad, pad:-pad]
    open_px = int(round(params.open_um / mpp))
    if open_px >= 1:
        mask = ndimage.binary_opening(mask, structure=_disk(open_px))
    px_area_um2 = mpp * mpp
    if params.max_hole_um2 > 0:
        mask = fill_small_holes(mask, max_px=params.max_hole_um2 / px_area_um2)
    if params.min_object_um2 > 0:
        mask = remove_small_objects(mask, min_px=params.min_object_um2 / px_area_um2)
    return mask


def _disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius


def remove_small_objects(mask: np.ndarray, *, min_px: float) -> np.ndarray:
    """``mask`` without 8-connected pieces of fewer than ``min_px`` pixels."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_px
    keep[0] = False
    return keep[labels]


def fill_small_holes(mask: np.ndarray, *, max_px: float) -> np.ndarray:
    """``mask`` with enclosed background pieces of at most ``max_px`` pixels filled."""
    labels, n = ndimage.label(~mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    fill = sizes <= max_px
    fill[0] = False
    fill[border] = False  # background reaching the edge is not a hole
    return mask | fill[labels]


def box_fractions(mask: np.ndarray, *, x0: np.ndarray, y0: np.ndarray, size: float) -> np.ndarray:
    """Fraction of ``mask`` pixels set in square boxes (mask pixel units, float corners).

    Box ``i`` covers ``[x0[i], x0[i] + size) x [y0[i], y0[i] + size)``; edges
    are rounded to whole mask pixels (at least one pixel per box); parts of a
    box outside the mask count as background.  Shapes: (N,) in, (N,) out.
    """
    h, w = mask.shape
    count = np.int32 if h * w < 2**31 else np.int64  # counts up to h * w: int32 halves the table's memory
    integral = np.zeros((h + 1, w + 1), count)
    np.cumsum(mask, axis=0, dtype=count, out=integral[1:, 1:])  # in place: no temporary tables
    np.cumsum(integral[1:, 1:], axis=1, out=integral[1:, 1:])
    x0 = np.asarray(x0, float)
    y0 = np.asarray(y0, float)
    xa = np.rint(x0).astype(np.int64)
    ya = np.rint(y0).astype(np.int64)
    side = max(1, int(round(size)))
    xb, yb = xa + side, ya + side
    xa_c, xb_c = np.clip(xa, 0, w), np.clip(xb, 0, w)
    ya_c, yb_c = np.clip(ya, 0, h), np.clip(yb, 0, h)
    inside = (integral[yb_c, xb_c].astype(np.int64) - integral[ya_c, xb_c] - integral[yb_c, xa_c]
              + integral[ya_c, xa_c])
    return inside / float(side * side)


def read_thumbnail(slide, *, mpp_l0: float, params: TissueParams) -> tuple[np.ndarray, float]:
    """An (H, W, 3) uint8 thumbnail of the whole slide and its resolution (micrometres per pixel).

    Box-filtered from the coarsest pyramid level at least as fine as ``params.thumbnail_mpp`` to that
    resolution (or to ``thumbnail_max_px`` on the long side, whichever is coarser), read block by block
    (:func:`mmray.features.thumbnail.read_downsampled`: never the whole level in memory).  Transparent
    (outside the scanned area) pixels become white.
    """
    want_ds, (tw, th) = _thumbnail_geometry(slide, mpp_l0=mpp_l0, params=params)
    return read_downsampled(slide, downsample=want_ds, size=(tw, th)), mpp_l0 * slide.level_dimensions[0][0] / tw


def read_saturation(slide, *, mpp_l0: float, params: TissueParams) -> tuple[np.ndarray, float]:
    """:func:`saturation` of :func:`read_thumbnail`'s picture (float32, same size and resolution), computed
    block by block as the slide is read: the RGB thumbnail never exists whole."""
    want_ds, (tw, th) = _thumbnail_geometry(slide, mpp_l0=mpp_l0, params=params)
    sat = read_downsampled(slide, downsample=want_ds, size=(tw, th), transform=saturation)
    return sat, mpp_l0 * slide.level_dimensions[0][0] / tw


def mpp_of_thumbnail(slide, *, mpp_l0: float, params: TissueParams) -> float:
    """The resolution (micrometres per pixel) :func:`read_thumbnail` returns, without reading anything."""
    _, (tw, _) = _thumbnail_geometry(slide, mpp_l0=mpp_l0, params=params)
    return mpp_l0 * slide.level_dimensions[0][0] / tw


def _thumbnail_geometry(slide, *, mpp_l0: float, params: TissueParams) -> tuple[float, tuple[int, int]]:
    w0, h0 = slide.level_dimensions[0]
    want_ds = max(params.thumbnail_mpp / mpp_l0, max(w0, h0) / params.thumbnail_max_px, 1.0)
    return want_ds, (max(1, int(round(w0 / want_ds))), max(1, int(round(h0 / want_ds))))
