"""Morphology of synthetic H&E slides: the plan of where tissue, nuclei, glands and pearls go.

``plan_slide`` draws, for one slide, the low-frequency tissue fields and every
nucleus/gland/pearl as an ellipse in level-0 pixels; ``slides.py`` renders the
plan tile by tile and writes the pyramid.  See ``slides.py`` for the planted
signal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from mmray.synth import slide_tissue
from mmray.synth.latent import Patient
from mmray.synth.profiles import SynthProfile

BACKGROUND_RGB = (240, 240, 238)
LEVEL_DOWNSAMPLE = 4
JPEG_QUALITY = 85
DENSITY_Z_SLOPE = 0.35  # log nuclear density per unit z_wsi
TRUNCATE_FRACTION = 0.4
COARSE_GRID_PX = 256  # samples along the long side of the low-frequency fields

# Stain optical densities for R, G, B: per tissue source site (mmray.synth.slide_tissue.site_stain).
_BG_OD = -np.log(np.array(BACKGROUND_RGB) / 255.0)
# Colour comes from a lookup table over quantised stain amounts: one gather
# instead of three exp() per pixel; the quantisation dither is the pixel noise.
_H_MAX, _H_LEVELS = 2.2, 128
_E_MIN, _E_MAX, _E_LEVELS = -0.024, 1.5, 128
_MAX_STAMP_ELEMENTS = 2_000_000  # bounds the memory of one vectorised stamping chunk


@dataclass(frozen=True)
class _Morph:
    """Per-subtype morphology; lengths in micrometres."""

    density_per_mm2: float  # at z_wsi = 0
    nucleus_radius_um: float
    nucleus_h: float  # hematoxylin amount in a nucleus
    eosin: float  # eosin amount in stroma and cytoplasm
    h_bg: float  # faint hematoxylin of cytoplasm
    tint_od: tuple[float, float, float]  # small subtype-specific hue shift


_MORPH = {
    "adenocarcinoma": _Morph(2400.0, 3.3, 1.0, 0.36, 0.11, (0.0, 0.0, 0.03)),
    "squamous_cell": _Morph(2800.0, 3.1, 1.1, 0.50, 0.05, (0.0, 0.03, 0.06)),
    "large_cell": _Morph(1400.0, 5.2, 0.95, 0.28, 0.13, (0.03, 0.0, 0.0)),
}



def planted_density_per_mm2(patient: Patient) -> float:
    """Expected nuclei per mm^2 of tumour on this patient's slides (non-tumour tissue:
    :data:`mmray.synth.slide_tissue.NORMAL_DENSITY_PER_MM2`)."""
    z = float(np.clip(patient.z_wsi, -3.0, 3.0))
    return _MORPH[patient.subtype].density_per_mm2 * float(np.exp(DENSITY_Z_SLOPE * z))



class Blobs(NamedTuple):
    """Ellipses in level-0 pixels, sorted by y; ``rx`` lies along ``theta``."""

    y: np.ndarray
    x: np.ndarray
    ry: np.ndarray
    rx: np.ndarray
    theta: np.ndarray
    value: np.ndarray

    def in_box(self, y0: int, x0: int, size_px: int) -> Blobs:
        """Blobs that can touch the square of side ``size_px`` at ``(y0, x0)``."""
        reach = float(max(self.ry.max(initial=0), self.rx.max(initial=0))) + 2.0
        # bounds in y's own dtype: a float64 query would make numpy convert all of y on every call
        lo, hi = np.searchsorted(self.y, np.array([y0 - reach, y0 + size_px + reach], dtype=self.y.dtype))
        x = self.x[lo:hi]
        keep = lo + np.flatnonzero((x > x0 - reach) & (x < x0 + size_px + reach))  # once, not per column
        return Blobs(*(c[keep] for c in self))


def make_blobs(*cols) -> Blobs:
    """Blobs from array-likes (y, x, ry, rx, theta, value), sorted by y; or several Blobs joined."""
    if isinstance(cols[0], Blobs):
        cols = tuple(map(np.concatenate, zip(*cols)))
    order = np.argsort(cols[0], kind="stable")
    return Blobs(*(np.asarray(c, dtype=np.float32)[order] for c in cols))


NO_BLOBS = make_blobs(*([np.zeros(0)] * 6))


@dataclass
class Plan:
    width_px: int
    height_px: int
    mpp: float
    grid_px: int  # level-0 pixels per coarse-grid sample
    fields: np.ndarray  # (4, gh, gw) float32: tissue, eosin modulation, squamous nests, tumour
    tissue_thr: float
    tissue_gain: float  # turns (field - threshold) into a 0..1 edge about 2 px wide
    tissue_fraction: float
    subtype: str
    morph: _Morph
    fibre: np.ndarray  # (P, P) periodic stroma texture
    lut: np.ndarray  # (_H_LEVELS * _E_LEVELS, 3) uint8 stain lookup
    nuclei: Blobs = NO_BLOBS
    lumens: Blobs = NO_BLOBS  # adenocarcinoma
    glands: Blobs = NO_BLOBS  # adenocarcinoma: lumen plus epithelial rim
    pearls: Blobs = NO_BLOBS  # squamous keratin pearls
    normal_nuclei: Blobs = NO_BLOBS  # non-tumour tissue: stromal and normal-gland nuclei
    tumour_thr: float = 0.0  # tumour where fields[3] > tumour_thr (inside tissue)
    n_tumour_nuclei: int = 0

    @property
    def tissue_mm2(self) -> float:
        return self.tissue_fraction * self.width_px * self.height_px * (self.mpp / 1000.0) ** 2

    @property
    def tumour_mask(self) -> np.ndarray:
        """(gh, gw) bool: coarse-grid cells of tumour."""
        return (self.fields[0] > self.tissue_thr) & (self.fields[3] > self.tumour_thr)

    @property
    def tumour_fraction(self) -> float:
        """Tumour share of the tissue."""
        inside = self.fields[0] > self.tissue_thr
        return float(self.tumour_mask.sum() / max(inside.sum(), 1))


def plan_slide(patient: Patient, *, profile: SynthProfile, rng: np.random.Generator) -> Plan:
    w, h, mpp = profile.slide_width_px, profile.slide_height_px, profile.slide_mpp
    grid_px = max(1, int(np.ceil(max(w, h) / COARSE_GRID_PX)))
    gh, gw = -(-h // grid_px), -(-w // grid_px)
    tissue = _island_field(rng, gh, gw)
    coverage = rng.uniform(0.30, 0.48)
    thr = float(max(min(np.quantile(tissue, 1.0 - coverage), 0.8 * tissue[gh // 2, gw // 2]), 0.05))
    eosin_lf = 1.0 + 0.18 * _smooth_noise(rng, (gh, gw), sigma_px=60.0 / (grid_px * mpp))
    nests = _smooth_noise(rng, (gh, gw), sigma_px=110.0 / (grid_px * mpp)) + 0.15
    if patient.subtype != "squamous_cell":
        nests[:] = -1.0
    inside = tissue > thr
    grad = np.hypot(*np.gradient(tissue))[inside & ~ndimage.binary_erosion(inside)]  # slope at the tissue edge
    grad = grad[grad > 0]
    morph = _MORPH[patient.subtype]
    tumour, tumour_thr = slide_tissue.tumour_field(rng, tissue, thr)
    nests[tumour <= tumour_thr] = -1.0  # squamous nests lie in the tumour
    plan = Plan(width_px=w, height_px=h, mpp=mpp, grid_px=grid_px,
                 fields=np.stack([tissue, eosin_lf, nests, tumour]).astype(np.float32), tissue_thr=thr,
                 tissue_gain=grid_px / (2.0 * float(np.median(grad))) if grad.size else 50.0,
                 tissue_fraction=float(inside.mean()), subtype=patient.subtype, morph=morph,
                 fibre=_fibre_patch(rng), lut=_stain_lut(rng, morph, slide_tissue.site_stain(patient.site)),
                 tumour_thr=tumour_thr)
    z = float(np.clip(patient.z_wsi, -3.0, 3.0))
    n_nuclei = int(rng.poisson(planted_density_per_mm2(patient) * plan.tissue_mm2 * plan.tumour_fraction))
    plan.n_tumour_nuclei = n_nuclei
    if patient.subtype == "adenocarcinoma":
        _plan_adenocarcinoma(plan, rng, n_nuclei=n_nuclei, z=z)
    elif patient.subtype == "squamous_cell":
        _plan_squamous(plan, rng, n_nuclei=n_nuclei, z=z)
    else:
        plan.nuclei = _nuclei(rng, *_sample_points(plan, rng, n_nuclei, where="tumour"), plan=plan, z=z)
    _plan_normal(plan, rng)
    return plan


def _island_field(rng: np.random.Generator, gh: int, gw: int) -> np.ndarray:
    """Smooth field whose upper level set is several irregular tissue islands, zero at the border."""
    yy, xx = np.mgrid[0:gh, 0:gw] / np.array([gh, gw]).reshape(2, 1, 1)
    field = np.zeros((gh, gw))
    for i in range(int(rng.integers(3, 7))):  # a handful of islands; the first sits at the centre
        cy, cx = 0.5 + rng.uniform(-0.04, 0.04, size=2) if i == 0 else rng.uniform(0.15, 0.85, size=2)
        sy, sx = rng.uniform(0.07, 0.2, size=2)
        ang = rng.uniform(0, np.pi)
        u = ((xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)) / sx
        v = ((yy - cy) * np.cos(ang) - (xx - cx) * np.sin(ang)) / sy
        field = np.maximum(field, (1.3 if i == 0 else rng.uniform(0.7, 1.1)) * np.exp(-0.5 * (u * u + v * v)))
    field += 0.22 * _smooth_noise(rng, (gh, gw), sigma_px=0.03 * max(gh, gw))
    edge_dist = np.minimum(np.minimum(yy, 1 - yy), np.minimum(xx, 1 - xx))  # fraction of the side
    return np.clip(field, 0.0, None) * np.clip((edge_dist - 0.04) / 0.06, 0.0, 1.0)  # bare glass at the edges


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], *, sigma_px: float) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=max(sigma_px, 0.5), mode="reflect")
    return noise / (noise.std() + 1e-9)


def _fibre_patch(rng: np.random.Generator, size_px: int = 320) -> np.ndarray:
    """Periodic fibre texture for stroma; the period divides no tile size, so tiles differ."""
    a, b = (ndimage.gaussian_filter(rng.standard_normal((size_px, size_px)), sigma=sd, mode="wrap")
            for sd in ((1.0, 7.0), (5.0, 1.5)))
    tex = a / a.std() + 0.5 * b / b.std()
    return (tex / tex.std()).astype(np.float32)


def _stain_lut(rng: np.random.Generator, morph: _Morph, site: slide_tissue.SiteStain) -> np.ndarray:
    """RGB for every quantised (hematoxylin, eosin) pair: the site's stain, with per-slide jitter."""
    h = np.linspace(0.0, _H_MAX, _H_LEVELS)[:, None, None]
    e = np.linspace(_E_MIN, _E_MAX, _E_LEVELS)[None, :, None]
    stained = np.clip((h + np.maximum(e, 0)) * 8.0, 0.0, 1.0)  # no tint on bare glass
    h_od, e_od = np.asarray(site.h_od) * site.gain, np.asarray(site.e_od) * site.gain
    od = (_BG_OD + h * h_od * rng.uniform(0.94, 1.06) + e * e_od * rng.uniform(0.94, 1.06)
          + stained * np.asarray(morph.tint_od))
    return np.clip(np.rint(255.0 * np.exp(-od)), 0, 255).astype(np.uint8).reshape(-1, 3)


def _sample_points(plan: Plan, rng: np.random.Generator, n: int, *, where: str, margin: float = 0.0,
                   avoid: Blobs = NO_BLOBS) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uniform level-0 points in ``tissue``, ``tumour``, ``normal`` (non-tumour) tissue, squamous
    ``nests`` or the tumour ``stroma`` between nests.

    Points inside any of the ``avoid`` discs (radius: the larger semi-axis) are left out.
    """
    ys, xs, got = [np.zeros(0)], [np.zeros(0)], 0
    g = plan.grid_px
    for attempt in range(50):
        if got >= n or (attempt > 0 and not ok.any()):  # done, or the region is (almost) empty
            break
        m = int(1.5 * (n - got) / max(plan.tissue_fraction * 0.4, 0.02)) + 64
        y, x = rng.uniform(0, plan.height_px, m), rng.uniform(0, plan.width_px, m)
        coords = [(y - (g - 1) / 2) / g, (x - (g - 1) / 2) / g]  # the interpolation tiles use
        tissue, nests, tumour = (ndimage.map_coordinates(plan.fields[c], coords, order=1, mode="nearest")
                                 for c in (0, 2, 3))
        ok = tissue > plan.tissue_thr + margin * (plan.fields[0].max() - plan.tissue_thr)
        if where != "tissue":
            ok &= (tumour <= plan.tumour_thr) if where == "normal" else (tumour > plan.tumour_thr)
        ok &= {"nests": nests > 0.1, "stroma": nests <= 0.0}.get(where, True)
        if avoid.y.size and ok.any():
            dist, idx = cKDTree(np.c_[avoid.y, avoid.x]).query(np.c_[y[ok], x[ok]], k=min(3, avoid.y.size))
            dist, idx = dist.reshape(dist.shape[0], -1), idx.reshape(dist.shape[0], -1)
            ok[ok] = np.all(dist > np.maximum(avoid.ry, avoid.rx)[idx], axis=1)
        ys.append(y[ok])
        xs.append(x[ok])
        got += int(ok.sum())
    return np.concatenate(ys)[:n], np.concatenate(xs)[:n]


def _nuclei(rng: np.random.Generator, y, x, *, plan: Plan, z: float, size: float = 1.0, elong: float = 0.0,
            theta=None) -> Blobs:
    """Nuclei centred at ``(y, x)``; size, pleomorphism and darkness grow with ``z``."""
    n, morph = len(y), plan.morph
    spread = 0.10 * np.exp(0.3 * z)
    r_um = morph.nucleus_radius_um * size
    r_px = np.clip(r_um * np.exp(0.06 * z + spread * rng.standard_normal(n)), 0.5 * r_um, 3.0 * r_um) / plan.mpp
    aspect = np.sqrt(1.0 + elong + np.abs(spread * rng.standard_normal(n)))
    theta = rng.uniform(0, np.pi, n) if theta is None else theta
    value = np.clip(morph.nucleus_h * np.exp(0.05 * z) * (1.0 + 0.5 * spread * rng.standard_normal(n)), 0.5, 1.6)
    return make_blobs(y, x, r_px / aspect, r_px * aspect, theta, value)


def _thin(y, x, r, *, gap: float) -> np.ndarray:
    """Keep-mask so that no two discs (radius ``r``, ``gap`` apart) overlap: of each clash, drop the later."""
    keep = np.ones(len(y), dtype=bool)
    if len(y) > 1:
        pairs = cKDTree(np.c_[y, x]).query_pairs(2 * float(r.max()) + gap, output_type="ndarray")
        d = np.hypot(y[pairs[:, 0]] - y[pairs[:, 1]], x[pairs[:, 0]] - x[pairs[:, 1]])
        keep[pairs[d < r[pairs[:, 0]] + r[pairs[:, 1]] + gap, 1]] = False
    return keep


def _plan_adenocarcinoma(plan: Plan, rng: np.random.Generator, *, n_nuclei: int, z: float) -> None:
    mpp, r_nuc = plan.mpp, plan.morph.nucleus_radius_um
    tumour_mm2 = plan.tissue_mm2 * plan.tumour_fraction
    crowding = max(1.0, n_nuclei / max(tumour_mm2, 1e-9) / _MORPH["adenocarcinoma"].density_per_mm2)
    # denser tumours have more glands, not more crowded ones: nuclei in a ring stay countable
    gy, gx = _sample_points(plan, rng, int(rng.poisson(55.0 * crowding * tumour_mm2)) + 1, where="tumour",
                            margin=0.1)
    lumen_um = rng.uniform(8.0, 20.0, len(gy))
    rim_um = 4.6 * r_nuc + 1.0  # two layers of nuclei
    keep = _thin(gy, gx, (lumen_um + rim_um + 1.0) / mpp, gap=6.0 / mpp)
    gy, gx, lumen_um = gy[keep], gx[keep], lumen_um[keep]
    aspect, gtheta, ones = rng.uniform(1.0, 1.35, len(gy)), rng.uniform(0, np.pi, len(gy)), np.ones(len(gy))
    plan.lumens = make_blobs(gy, gx, lumen_um / aspect / mpp, lumen_um / mpp, gtheta, ones)
    plan.glands = make_blobs(gy, gx, (lumen_um / aspect + rim_um) / mpp, (lumen_um + rim_um) / mpp, gtheta, ones)
    # About 60% of nuclei line the glands, shared out by circumference, evenly spaced in at most two layers
    # (stratification): a layer holds one nucleus per ~2.1 radii of its circumference.
    circ = lumen_um * (1 + 1 / aspect)
    per_layer = np.maximum(3, np.floor(np.pi * (lumen_um + 1.3 * r_nuc) * (1 + 1 / aspect) / (2.1 * r_nuc)))
    per_layer = per_layer.astype(int)
    n_ring = np.floor(0.6 * n_nuclei * circ / max(circ.sum(), 1e-9) + rng.random(len(gy))).astype(int)
    n_ring = np.minimum(n_ring, 2 * per_layer)
    gi = np.repeat(np.arange(len(gy)), n_ring)
    j = np.arange(gi.size) - np.repeat(np.cumsum(n_ring) - n_ring, n_ring)
    layer, slot = j // per_layer[gi], j % per_layer[gi]
    phi = 2 * np.pi * (slot + 0.5 * layer + rng.uniform(-0.12, 0.12, gi.size)) / per_layer[gi] + rng.uniform(0, 6.3)
    depth = (1.3 + 2.2 * layer) * r_nuc + rng.normal(0, 0.12 * r_nuc * np.exp(0.3 * z), gi.size)
    u = (lumen_um[gi] + depth) * np.cos(phi)  # gland frame, um
    v = (lumen_um[gi] / aspect[gi] + depth) * np.sin(phi)
    c, s = np.cos(gtheta[gi]), np.sin(gtheta[gi])
    off_y, off_x = u * s + v * c, u * c - v * s
    ring = _nuclei(rng, gy[gi] + off_y / mpp, gx[gi] + off_x / mpp, plan=plan, z=z, elong=0.5,
                   theta=np.arctan2(off_y, off_x))  # long axis points away from the lumen
    # The rest are small spindle (fibroblast) nuclei in the stroma between glands.
    sy, sx = _sample_points(plan, rng, max(n_nuclei - gi.size, 0), where="tumour", avoid=plan.glands)
    plan.nuclei = make_blobs(ring, _nuclei(rng, sy, sx, plan=plan, z=z, size=0.75, elong=1.6))


def _plan_squamous(plan: Plan, rng: np.random.Generator, *, n_nuclei: int, z: float) -> None:
    mpp = plan.mpp
    py, px = _sample_points(plan, rng, int(rng.poisson(9.0 * plan.tissue_mm2 * plan.tumour_fraction)) + 1,
                            where="nests", margin=0.05)
    r_um = rng.uniform(14.0, 32.0, len(py))
    keep = _thin(py, px, r_um / mpp, gap=20.0 / mpp)
    py, px, r_um = py[keep], px[keep], r_um[keep]
    plan.pearls = make_blobs(py, px, r_um / rng.uniform(1.0, 1.3, len(py)) / mpp, r_um / mpp,
                         rng.uniform(0, np.pi, len(py)), np.ones(len(py)))
    # Solid sheets of tumour cells, 3x as cellular as the stroma between them (spindle nuclei).
    tissue, nests = plan.tumour_mask, plan.fields[2]
    nest_cells, stroma_cells = (tissue & (nests > 0.1)).sum(), (tissue & (nests <= 0.0)).sum()
    n_nest = int(round(n_nuclei * 3 * nest_cells / max(3 * nest_cells + stroma_cells, 1)))
    ny, nx = _sample_points(plan, rng, n_nest, where="nests", avoid=plan.pearls)
    sy, sx = _sample_points(plan, rng, n_nuclei - n_nest, where="stroma")
    plan.nuclei = make_blobs(_nuclei(rng, ny, nx, plan=plan, z=z),
                         _nuclei(rng, sy, sx, plan=plan, z=z, size=0.75, elong=1.4))


def _plan_normal(plan: Plan, rng: np.random.Generator) -> None:
    """Non-tumour tissue, the same for every patient: small normal glands lined by one layer of small round
    nuclei, and spindle fibroblast nuclei in the stroma (:mod:`mmray.synth.slide_tissue`)."""
    mpp = plan.mpp
    normal_mm2 = plan.tissue_mm2 * (1.0 - plan.tumour_fraction)
    n_total = int(rng.poisson(slide_tissue.NORMAL_DENSITY_PER_MM2 * normal_mm2))
    gy, gx = _sample_points(plan, rng, int(rng.poisson(slide_tissue.NORMAL_GLANDS_PER_MM2 * normal_mm2)),
                            where="normal", margin=0.05)
    r_nuc, rim_um = 2.6, 7.5
    lumen_um = rng.uniform(6.0, 11.0, len(gy))
    keep = _thin(gy, gx, (lumen_um + rim_um) / mpp, gap=8.0 / mpp) if len(gy) else np.zeros(0, bool)
    gy, gx, lumen_um = gy[keep], gx[keep], lumen_um[keep]
    ones, theta = np.ones(len(gy)), rng.uniform(0, np.pi, len(gy))
    lumens = make_blobs(gy, gx, lumen_um / mpp, lumen_um / mpp, theta, ones)
    glands = make_blobs(gy, gx, (lumen_um + rim_um) / mpp, (lumen_um + rim_um) / mpp, theta, ones)
    plan.lumens, plan.glands = make_blobs(plan.lumens, lumens), make_blobs(plan.glands, glands)
    # One layer of evenly spaced nuclei around each lumen (about one per 8 um of circumference).
    n_ring = np.maximum(3, np.floor(2 * np.pi * (lumen_um + 3.0) / 8.0)).astype(int)
    scale = min(1.0, slide_tissue.NORMAL_GLAND_NUCLEUS_FRACTION * n_total / max(int(n_ring.sum()), 1))
    n_ring = np.floor(n_ring * scale + rng.random(len(gy))).astype(int)
    gi = np.repeat(np.arange(len(gy)), n_ring)
    j = np.arange(gi.size) - np.repeat(np.cumsum(n_ring) - n_ring, n_ring)
    phi = 2 * np.pi * j / np.maximum(n_ring[gi], 1) + rng.uniform(0, 6.3, gi.size)
    dist = lumen_um[gi] + 1.2 * r_nuc
    ry, rx = gy[gi] + dist * np.sin(phi) / mpp, gx[gi] + dist * np.cos(phi) / mpp
    sy, sx = _sample_points(plan, rng, max(n_total - gi.size, 0), where="normal", avoid=plan.glands)
    y, x = np.r_[ry, sy], np.r_[rx, sx]
    n, n_ring_total = len(y), gi.size
    r_um = np.where(np.arange(n) < n_ring_total, r_nuc, 2.0) * np.exp(0.06 * rng.standard_normal(n))
    aspect = np.sqrt(np.where(np.arange(n) < n_ring_total, 1.15, 2.6))  # round gland cells, spindle fibroblasts
    theta = np.r_[phi, rng.uniform(0, np.pi, len(sy))]
    value = np.clip(0.85 * (1.0 + 0.05 * rng.standard_normal(n)), 0.6, 1.1)
    plan.normal_nuclei = make_blobs(y, x, r_um / aspect / mpp, r_um * aspect / mpp, theta, value)
