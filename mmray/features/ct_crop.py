"""Tumour-centred CT crops of a fixed physical size, at isotropic spacing, HU-windowed.

A crop is a cube of ``crop_mm`` on each side centred on the tumour mask's
centre of mass, sampled on an isotropic grid of ``spacing_mm`` (so
``n = round(crop_mm / spacing_mm)`` voxels per side), whatever the study's
own voxel spacing: a 30 mm tumour is 15 voxels wide in every crop at 2 mm,
from a 0.8 mm or a 3 mm scan alike.  That is what lets one 3D encoder compare
studies.  Sampling is trilinear for HU (scipy ``map_coordinates``) and
trilinear-then-threshold at 0.5 for the mask (nearest-neighbour would shift
edges by up to half a source voxel); outside the scan the image is air
(-1000 HU) and the mask empty.  HU are clipped to ``window_hu`` and scaled to
[0, 1].

Arrays are ``(z, y, x)`` in the volume's index order (slice, row, column),
as :class:`mmray.ingest.ct_volume.Volume` gives them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np

from mmray.errors import InputError

AIR_HU = -1000.0


@dataclass(frozen=True)
class CropSpec:
    crop_mm: float = 64.0
    spacing_mm: float = 2.0
    window_hu: tuple[float, float] = (-1000.0, 400.0)

    @property
    def n_vox(self) -> int:
        return max(1, int(round(self.crop_mm / self.spacing_mm)))

    def validate(self):
        if self.crop_mm <= 0 or self.spacing_mm <= 0:
            yield ("crop_mm", f"crop_mm and spacing_mm must be > 0, got {self.crop_mm}, {self.spacing_mm}")
        elif self.n_vox > 256:
            yield ("crop_mm", f"crop_mm / spacing_mm = {self.n_vox} voxels per side is more than 256; "
                              f"use a coarser spacing_mm or a smaller crop")
        if len(self.window_hu) != 2 or self.window_hu[0] >= self.window_hu[1]:
            yield ("window_hu", f"must be [low, high] with low < high, got {list(self.window_hu)}")

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def tumour_centre_vox(mask: np.ndarray) -> np.ndarray:
    """(z, y, x) centre of mass of the mask in voxel indices; InputError when it is empty."""
    idx = np.argwhere(mask)
    if len(idx) == 0:
        raise InputError("the tumour mask is empty: no voxel to centre the crop on; check the SEG's segments",
                         stage="ct_crop")
    return idx.mean(axis=0)


def _grid(centre_vox: np.ndarray, spacing_zyx: np.ndarray, spec: CropSpec) -> np.ndarray:
    """(3, n, n, n) source voxel coordinates of the crop's voxel centres."""
    n = spec.n_vox
    offsets_mm = (np.arange(n) - (n - 1) / 2.0) * spec.spacing_mm
    axes = [centre_vox[a] + offsets_mm / spacing_zyx[a] for a in range(3)]
    return np.stack(np.meshgrid(*axes, indexing="ij"))


def tumour_crop(hu: np.ndarray, mask: np.ndarray, *, spacing_mm_zyx, spec: CropSpec,
                centre_vox: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(image float32 (n, n, n) in [0, 1], mask uint8 (n, n, n))`` of the tumour-centred crop.

    ``hu``, ``mask``: (nz, ny, nx); ``spacing_mm_zyx``: the volume's voxel spacing.
    """
    from scipy.ndimage import map_coordinates

    if hu.shape != mask.shape:
        raise InputError(f"CT volume {hu.shape} and mask {mask.shape} differ in shape", stage="ct_crop")
    spacing = np.asarray(spacing_mm_zyx, dtype=np.float64)
    if spacing.shape != (3,) or not np.all(spacing > 0):
        raise InputError(f"voxel spacing must be three positive mm values, got {spacing_mm_zyx}", stage="ct_crop")
    centre = tumour_centre_vox(mask) if centre_vox is None else np.asarray(centre_vox, float)
    coords = _grid(centre, spacing, spec)
    image = map_coordinates(np.asarray(hu, np.float32), coords, order=1, mode="constant", cval=AIR_HU)
    lo, hi = spec.window_hu
    image = ((np.clip(image, lo, hi) - lo) / (hi - lo)).astype(np.float32)
    soft = map_coordinates(mask.astype(np.float32), coords, order=1, mode="constant", cval=0.0)
    return image, (soft >= 0.5).astype(np.uint8)
