"""Tumour and non-tumour tissue, per-site stain shifts and QuPath tumour annotations of synthetic slides.

Kept apart from the subtype architecture (:mod:`mmray.synth.slide_morphology`)
and the pyramid writer (:mod:`mmray.synth.slides`):

* **tumour region**: a smooth random field on the slide's coarse grid; the
  tumour is the tissue where the field exceeds a threshold chosen so that the
  tumour covers a fraction drawn from :data:`TUMOUR_FRACTION_RANGE` of the
  tissue (the slide centre preferred).  Inside it the subtype's architecture
  and the planted nuclear density (which grows with ``z_wsi``); outside it
  non-tumour tissue: stroma with spindle fibroblast nuclei and small normal
  glands lined by one layer of small, round, regular nuclei, at
  :data:`NORMAL_DENSITY_PER_MM2` nuclei per mm^2 whatever the patient (no risk
  signal).  ``truth.json`` holds the mask (:func:`encode_mask`).
* **stain by tissue source site**: each site stains with its own haematoxylin
  and eosin colours and intensity (:func:`site_stain`), independent of risk,
  as the batch effect that lets a model recognise the hospital a slide came
  from (Howard et al., Nat Commun 2021).
* **annotations**: for a fraction of slides, the tumour outline as a QuPath
  GeoJSON FeatureCollection of ``Tumor`` polygons in level-0 pixels
  (:func:`tumour_geojson`).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

TUMOUR_FRACTION_RANGE = (0.5, 0.75)  # of the tissue
NORMAL_DENSITY_PER_MM2 = 900.0  # non-tumour tissue: stroma and normal glands
NORMAL_GLANDS_PER_MM2 = 30.0
NORMAL_GLAND_NUCLEUS_FRACTION = 0.35  # of the non-tumour nuclei, the rest are stromal
TUMOUR_CLASS = "Tumor"  # QuPath's built-in class name
TUMOUR_COLOUR_RGB = (200, 0, 0)


@dataclass(frozen=True)
class SiteStain:
    """Stain optical densities (per unit amount, R, G, B) and overall intensity of one tissue source site."""

    h_od: tuple[float, float, float]
    e_od: tuple[float, float, float]
    gain: float

    def as_dict(self) -> dict:
        return asdict(self)


# The four sites of mmray.synth.latent.SITES: clearly different hue and intensity (the Ruifrok & Johnston
# vectors at "05"); any other site code gets a shift derived from its hash (site_stain).
SITE_STAINS = {
    "05": SiteStain(h_od=(0.65, 0.70, 0.29), e_od=(0.05, 0.85, 0.30), gain=1.0),
    "38": SiteStain(h_od=(0.48, 0.82, 0.30), e_od=(0.00, 0.78, 0.52), gain=1.3),  # purple H, orange E, dark
    "44": SiteStain(h_od=(0.80, 0.58, 0.16), e_od=(0.16, 0.95, 0.16), gain=0.75),  # blue H, pink E, pale
    "55": SiteStain(h_od=(0.58, 0.68, 0.46), e_od=(0.02, 0.72, 0.48), gain=1.15),
}


def site_stain(site: str) -> SiteStain:
    """The stain of tissue source site ``site`` (a table entry, else a shift seeded by the code)."""
    if site in SITE_STAINS:
        return SITE_STAINS[site]
    base = SITE_STAINS["05"]
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(f"stain:{site}".encode()).digest()[:8], "little"))
    h = np.clip(np.asarray(base.h_od) + rng.normal(0, 0.08, 3), 0.05, None)
    e = np.clip(np.asarray(base.e_od) + rng.normal(0, 0.08, 3), 0.01, None)
    gain = round(float(rng.uniform(0.8, 1.2)), 3)
    return SiteStain(h_od=tuple(np.round(h, 3)), e_od=tuple(np.round(e, 3)), gain=gain)


def tumour_field(rng: np.random.Generator, tissue: np.ndarray, tissue_thr: float) -> tuple[np.ndarray, float]:
    """``(field (gh, gw) float32, threshold)``: tumour is tissue where ``field > threshold``.

    A smooth noise field plus a bump at the slide centre, thresholded at the quantile that makes the
    tumour a fraction ``U(TUMOUR_FRACTION_RANGE)`` of the tissue.
    """
    gh, gw = tissue.shape
    yy, xx = np.mgrid[0:gh, 0:gw] / np.array([gh, gw]).reshape(2, 1, 1)
    noise = ndimage.gaussian_filter(rng.standard_normal((gh, gw)), sigma=0.09 * max(gh, gw), mode="reflect")
    noise /= noise.std() + 1e-9
    field = (noise + 1.2 * np.exp(-((yy - 0.5) ** 2 + (xx - 0.5) ** 2) / (2 * 0.25**2))).astype(np.float32)
    inside = tissue > tissue_thr
    fraction = rng.uniform(*TUMOUR_FRACTION_RANGE)
    thr = float(np.quantile(field[inside], 1.0 - fraction)) if inside.any() else float(field.max())
    return field, thr


def encode_mask(mask: np.ndarray) -> list[int]:
    """Run lengths of a boolean mask in row-major order, starting with a run of False (maybe 0 long)."""
    flat = np.asarray(mask, bool).ravel()
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.r_[0, change, flat.size]
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat.size and flat[0] else runs


def decode_mask(runs: list[int], shape: tuple[int, int]) -> np.ndarray:
    """The boolean mask of :func:`encode_mask`'s run lengths."""
    values = np.arange(len(runs)) % 2 == 1
    flat = np.repeat(values, np.asarray(runs, int))
    if flat.size != shape[0] * shape[1]:
        raise ValueError(f"run lengths cover {flat.size} cells, the mask has {shape[0] * shape[1]}")
    return flat.reshape(shape)


def mask_truth(mask: np.ndarray, *, grid_px: int) -> dict:
    """The ``tumour_mask`` entry of a slide in truth.json: cell ``(r, c)`` covers level-0 pixels
    ``[c * grid_px, (c + 1) * grid_px) x [r * grid_px, (r + 1) * grid_px)``."""
    return {"grid_px": int(grid_px), "shape": [int(s) for s in mask.shape], "rle": encode_mask(mask)}


def truth_mask(entry: dict) -> tuple[np.ndarray, int]:
    """``(mask, grid_px)`` of a truth.json ``tumour_mask`` entry."""
    return decode_mask(entry["rle"], tuple(entry["shape"])), int(entry["grid_px"])


def _rings(blob: np.ndarray) -> list[np.ndarray]:
    """Closed (K, 2) row/col rings of one 4-connected blob: its outline, then the outline of each hole."""
    from skimage.measure import find_contours

    padded = np.pad(blob, 1)
    filled = ndimage.binary_fill_holes(padded)
    outer = max(find_contours(filled.astype(float), 0.5), key=len)
    rings = [outer]
    holes, n = ndimage.label(filled & ~padded)
    for h in range(1, n + 1):
        rings.append(max(find_contours((holes == h).astype(float), 0.5), key=len))
    return [r - 1.0 for r in rings]  # undo the padding


def tumour_geojson(mask: np.ndarray, *, grid_px: int, min_cells: int = 4) -> dict:
    """QuPath-style GeoJSON (FeatureCollection of ``Tumor`` polygon annotations, level-0 pixel coordinates)
    of a coarse tumour mask; pieces smaller than ``min_cells`` grid cells are left out (a pathologist
    outlines regions, not specks)."""
    labels, n = ndimage.label(mask)
    features = []
    for i in range(1, n + 1):
        blob = labels == i
        if blob.sum() < min_cells:
            continue
        rings = []
        for ring in _rings(blob):
            xy = np.column_stack([(ring[:, 1] + 0.5) * grid_px, (ring[:, 0] + 0.5) * grid_px])
            xy = np.round(xy, 1)
            if not np.array_equal(xy[0], xy[-1]):
                xy = np.vstack([xy, xy[:1]])
            rings.append(xy.tolist())
        features.append({"type": "Feature", "id": f"tumour-{i}",
                         "geometry": {"type": "Polygon", "coordinates": rings},
                         "properties": {"objectType": "annotation", "isLocked": False,
                                        "classification": {"name": TUMOUR_CLASS, "color": list(TUMOUR_COLOUR_RGB)}}})
    return {"type": "FeatureCollection", "features": features}
