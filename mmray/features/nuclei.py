"""Nuclei on CPU without weights: haematoxylin channel -> watershed -> morphometry per nucleus.

::

    rgb (H, W, 3) uint8 --hematoxylin()--> H optical density (skimage rgb2hed's H, via lookup tables)
      --segment_nuclei()--> labels: smooth, threshold (Otsu with a floor), fill holes (vesicular nuclei
                            have pale centres), distance transform, one marker per local maximum, watershed
      --measure_nuclei()--> one row per nucleus: centroid, area_um2, perimeter_um, eccentricity, solidity,
                            major/minor axis (um), H mean/sd, texture (mean |Laplacian| of H: chromatin)

Sizes are in micrometres: every length is scaled by the tile's ``mpp``, so
the same tissue scanned at another resolution gives the same numbers.  Tile
statistics and nucleus graphs are in :mod:`mmray.features.nuclei_graph`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from mmray.errors import InputError

# Per-nucleus measures, in the order of the columns of ``measure_nuclei`` (after x, y).
MORPH = ("area_um2", "perimeter_um", "eccentricity", "solidity", "major_axis_um", "minor_axis_um", "h_mean", "h_sd",
         "texture")


@dataclass(frozen=True)
class NucleiParams:
    """Segmentation settings; lengths in micrometres, so they hold at any scan resolution."""

    smooth_um: float = 0.25  # Gaussian sigma applied to H before thresholding
    min_threshold: float = 0.03  # floor under the H threshold (a tile without nuclei must not split noise)
    otsu_factor: float = 1.0  # H threshold = max(min_threshold, otsu_factor x Otsu's threshold)
    min_area_um2: float = 8.0  # smaller objects are debris, not nuclei
    max_area_um2: float = 500.0
    peak_distance_um: float = 2.5  # closest two nucleus centres the watershed will separate
    tissue_od: float = 0.3  # total optical density above which a pixel counts as tissue

    def validate(self):
        if self.smooth_um < 0 or self.min_threshold < 0 or self.tissue_od < 0:
            yield ("", "smooth_um, min_threshold and tissue_od must be >= 0")
        if not 0 < self.min_area_um2 < self.max_area_um2:
            yield ("min_area_um2", f"need 0 < min_area_um2 < max_area_um2, got {self.min_area_um2} and "
                                   f"{self.max_area_um2}")
        if self.peak_distance_um <= 0:
            yield ("peak_distance_um", f"must be positive, got {self.peak_distance_um}")


def _stain_luts() -> np.ndarray:
    """(3, 256) float32: channel c's contribution to H for each uint8 value (skimage's rgb2hed, row 0)."""
    from skimage.color import hed_from_rgb

    v = np.maximum(np.arange(256, dtype=np.float64) / 255.0, 1e-6)
    od = np.log(v) / np.log(1e-6)  # rgb2hed's log adjustment
    return (od[None, :] * hed_from_rgb[:, 0][:, None]).astype(np.float32)


_H_LUT = _stain_luts()
_OD_LUT = (-np.log(np.maximum(np.arange(256) / 255.0, 1 / 255.0))).astype(np.float32)


def hematoxylin(rgb: np.ndarray) -> np.ndarray:
    """(H, W) float32 haematoxylin amount of an (H, W, 3) uint8 tile; equals ``rgb2hed(rgb)[..., 0]``
    clipped at 0, by three table look-ups instead of a float64 log per pixel."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError(f"nuclei need an (H, W, 3) uint8 tile, got {rgb.dtype} {rgb.shape}")
    h = _H_LUT[0][rgb[..., 0]]
    h += _H_LUT[1][rgb[..., 1]]
    h += _H_LUT[2][rgb[..., 2]]
    return np.maximum(h, 0.0, out=h)


def tissue_mask(rgb: np.ndarray, *, params: NucleiParams = NucleiParams()) -> np.ndarray:
    """(H, W) bool: pixels whose total optical density exceeds ``params.tissue_od`` (not glass)."""
    od = _OD_LUT[rgb[..., 0]] + _OD_LUT[rgb[..., 1]] + _OD_LUT[rgb[..., 2]]
    return ndi.uniform_filter(od, 5) > params.tissue_od


def _otsu(values: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    return float(threshold_otsu(values)) if values.size > 1 and values.min() < values.max() else float("inf")


def _peaks(dist: np.ndarray, labels: np.ndarray, min_distance: int) -> np.ndarray:
    """(K, 2) row/col of distance-map maxima at least ``min_distance`` apart (Chebyshev) within a component.

    What skimage's ``peak_local_max(dist, min_distance=, labels=, exclude_border=False)`` finds, without its
    per-component Python loop (a quarter of a tile's time): local maxima by one maximum filter, then, highest
    first, every later maximum of the same component within ``min_distance`` of a kept one is dropped.  A
    component whose maximum is shadowed by a higher neighbour gets its marker from the caller's fallback.
    """
    from scipy.spatial import cKDTree

    size = 2 * min_distance + 1
    local = (dist == ndi.maximum_filter(dist, size=size, mode="nearest")) & (labels > 0)
    coords = np.argwhere(local)
    if len(coords) < 2:
        return coords
    values, comp = dist[local], labels[local]
    order = np.lexsort((coords[:, 1], coords[:, 0], -values))  # highest first, ties in reading order
    coords, comp = coords[order], comp[order]
    pairs = cKDTree(coords).query_pairs(min_distance, p=np.inf, output_type="ndarray")
    pairs = np.sort(pairs[comp[pairs[:, 0]] == comp[pairs[:, 1]]], axis=1)
    keep = np.ones(len(coords), bool)
    if len(pairs):
        pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
        starts = np.searchsorted(pairs[:, 0], np.arange(len(coords) + 1))
        for i in range(len(coords)):
            if keep[i]:
                keep[pairs[starts[i]:starts[i + 1], 1]] = False
    return coords[keep]


def segment_nuclei(h: np.ndarray, *, mpp: float, params: NucleiParams = NucleiParams()) -> np.ndarray:
    """(H, W) int32 labels (0 background, 1..N nuclei) of a haematoxylin image at ``mpp`` um/px."""
    from skimage.segmentation import watershed

    if not mpp > 0:
        raise InputError(f"nuclei need a positive mpp (um/px), got {mpp}")
    hs = ndi.gaussian_filter(h, params.smooth_um / mpp) if params.smooth_um > 0 else h
    thr = max(params.otsu_factor * _otsu(hs[::2, ::2]), params.min_threshold)
    mask = ndi.binary_fill_holes(hs > thr)
    px_area = mpp * mpp
    cc, n_cc = ndi.label(mask)
    if n_cc == 0:
        return cc.astype(np.int32)
    sizes = np.bincount(cc.ravel())
    small = sizes * px_area < params.min_area_um2
    small[0] = False
    if small.any():
        mask[small[cc]] = False
        cc[~mask] = 0
    dist = ndi.distance_transform_edt(mask).astype(np.float32)
    dist = ndi.gaussian_filter(dist, 0.5)  # one marker per plateau, not per pixel-grid ridge
    peaks = _peaks(dist, cc, max(1, int(round(params.peak_distance_um / mpp))))
    markers = np.zeros(h.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    # components too thin for a distance peak still get one marker at their deepest pixel
    lost = np.setdiff1d(np.unique(cc[mask]), np.unique(cc[markers > 0]))
    if lost.size:
        where = ndi.maximum_position(dist, cc, lost)
        for k, (r, c) in enumerate(where):
            markers[r, c] = len(peaks) + 1 + k
    labels = watershed(-dist, markers, mask=mask).astype(np.int32)
    areas = np.bincount(labels.ravel()) * px_area
    bad = (areas < params.min_area_um2) | (areas > params.max_area_um2)
    bad[0] = True
    keep = np.flatnonzero(~bad)
    remap = np.zeros(len(areas), np.int32)
    remap[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
    return remap[labels]


_PERIMETER_WEIGHTS = np.zeros(50)  # skimage.measure.perimeter's weights by neighbourhood code
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1.0
_PERIMETER_WEIGHTS[[21, 33]] = np.sqrt(2.0)
_PERIMETER_WEIGHTS[[13, 23]] = (1.0 + np.sqrt(2.0)) / 2.0


def _perimeters(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(perimeter (n + 1,), border mask)``: skimage's 4-neighbourhood perimeter of every label at once.

    skimage measures each region on its own crop: a border pixel has a 4-neighbour outside the region, and
    it weighs border pixels by which of their 8 neighbours are border pixels *of the same region*; the
    shifted comparisons below do that for all labels in one pass over the image.
    """
    pad = np.pad(labels, 1)
    core = pad[1:-1, 1:-1]
    inner = (core > 0) & (pad[:-2, 1:-1] == core) & (pad[2:, 1:-1] == core) & (pad[1:-1, :-2] == core) \
        & (pad[1:-1, 2:] == core)
    border = (core > 0) & ~inner
    bpad = np.pad(np.where(border, labels, 0), 1)
    h, w = labels.shape
    code = border.astype(np.int32)
    for dy, dx, weight in ((-1, 0, 2), (1, 0, 2), (0, -1, 2), (0, 1, 2), (-1, -1, 10), (-1, 1, 10), (1, -1, 10),
                           (1, 1, 10)):
        code += weight * (bpad[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] == core)
    weights = _PERIMETER_WEIGHTS[np.where(border, code, 0)]
    return np.bincount(labels[border], weights=weights[border], minlength=n + 1), border


def _convex_areas(labels: np.ndarray, border: np.ndarray, n: int, areas: np.ndarray) -> np.ndarray:
    """(n + 1,) pixels inside each region's convex hull, as skimage's ``area_convex`` counts them (hull of the
    border pixels' diamond corners, grid points in or on the polygon)."""
    from scipy.spatial import ConvexHull, QhullError
    from skimage.measure import grid_points_in_poly

    out = areas.astype(np.float64).copy()
    diamond = np.array([[-0.5, 0.0], [0.5, 0.0], [0.0, -0.5], [0.0, 0.5]])
    for i, sl in enumerate(ndi.find_objects(labels, max_label=n), start=1):
        if sl is None:
            continue
        edge = border[sl] & (labels[sl] == i)
        pts = (np.argwhere(edge)[:, None, :] + diamond).reshape(-1, 2)  # duplicates do not change a hull
        try:
            hull = ConvexHull(pts)
        except QhullError:  # a line of pixels: its hull is itself
            continue
        shape = (sl[0].stop - sl[0].start, sl[1].stop - sl[1].start)
        out[i] = float((grid_points_in_poly(shape, hull.points[hull.vertices], binarize=False) >= 1).sum())
    return out


def measure_nuclei(labels: np.ndarray, h: np.ndarray, *, mpp: float) -> np.ndarray:
    """(N, 2 + len(MORPH)) float64: per nucleus ``y, x`` (pixels of the tile) then :data:`MORPH`.

    The same values as skimage's ``regionprops_table`` (centroid, area, perimeter, eccentricity, solidity,
    major/minor axis length), computed for all nuclei at once with bincounts over the label image instead
    of region by region (regionprops' per-region Python was half of the nuclei stage's time); only the
    convex hulls (solidity) loop over nuclei.
    """
    n = int(labels.max())
    if n == 0:
        return np.zeros((0, 2 + len(MORPH)))
    fg = np.flatnonzero(labels.ravel())  # nuclei cover a small part of a tile: work on their pixels only
    flat = labels.ravel()[fg]
    rows, cols = np.divmod(fg, labels.shape[1])
    rows, cols = rows.astype(np.float64), cols.astype(np.float64)
    area = np.bincount(flat, minlength=n + 1).astype(np.float64)
    present = np.flatnonzero(area > 0)
    present = present[present > 0]

    def mean(values):
        return np.bincount(flat, weights=values, minlength=n + 1) / np.maximum(area, 1)

    cy, cx = mean(rows), mean(cols)
    var_r, var_c = mean(rows * rows) - cy**2, mean(cols * cols) - cx**2
    cov = mean(rows * cols) - cy * cx
    half_tr, det = (var_r + var_c) / 2, np.sqrt(np.maximum(((var_r - var_c) / 2) ** 2 + cov**2, 0))
    l1, l2 = half_tr + det, np.maximum(half_tr - det, 0)
    ecc = np.sqrt(np.clip(1 - np.divide(l2, l1, out=np.ones_like(l1), where=l1 > 0), 0, 1))
    perim, border = _perimeters(labels, n)
    solidity = area / np.maximum(_convex_areas(labels, border, n, area), 1)
    hv = h.ravel()[fg].astype(np.float64)
    h_mean = mean(hv)
    h_sd = np.sqrt(np.maximum(mean(hv * hv) - h_mean**2, 0.0))
    texture = mean(np.abs(ndi.laplace(h)).ravel()[fg].astype(np.float64))
    i = present
    return np.column_stack([cy[i], cx[i], area[i] * mpp * mpp, perim[i] * mpp, ecc[i], solidity[i],
                            4 * np.sqrt(l1[i]) * mpp, 4 * np.sqrt(l2[i]) * mpp, h_mean[i], h_sd[i], texture[i]])


def nuclei_of_tile(rgb: np.ndarray, *, mpp: float, params: NucleiParams = NucleiParams()):
    """``(table (N, 2 + len(MORPH)), tissue fraction)`` of one RGB tile at ``mpp`` um/px."""
    h = hematoxylin(rgb)
    labels = segment_nuclei(h, mpp=mpp, params=params)
    return measure_nuclei(labels, h, mpp=mpp), float(tissue_mask(rgb, params=params).mean())


def clump_counts(nuclei: np.ndarray, *, min_solidity: float = 0.9) -> np.ndarray:
    """(N,) estimated nuclei in each segment: its area over the median area of the tile's convex (single)
    segments, at least 1.  Touching nuclei the watershed could not split (gland rings, crowded sheets)
    still count, so density does not saturate where cells crowd."""
    if len(nuclei) == 0:
        return np.zeros(0)
    area, solidity = nuclei[:, 2 + MORPH.index("area_um2")], nuclei[:, 2 + MORPH.index("solidity")]
    single = area[solidity >= min_solidity]
    ref = float(np.median(single)) if single.size >= 3 else float(np.median(area))
    return np.maximum(1.0, np.round(area / ref)) if ref > 0 else np.ones(len(area))
