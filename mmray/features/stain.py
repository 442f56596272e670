"""Stain normalisation of H&E tiles: Macenko or Reinhard, one reference per cohort, one source stain per slide.

::

    tissue pixels of a few tiles of a slide --fit_params()--> the slide's stain (torchstain's fit)
    tissue pixels of a sample of slides     --fit_params()--> the cohort reference (fitted once, kept in
                                                              the manifest params and the embed key)
    tiles (N, H, W, 3) uint8 + each row's slide stain --normalise()--> tiles in the reference's stain

The stain of a slide and of the reference are estimated with torchstain
(``TorchMacenkoNormalizer.fit``: stain vectors from the angular percentiles of
optical density in the plane of its two main eigenvectors, and the 99th
percentile of each stain's concentration; ``TorchReinhardNormalizer.fit``: the
mean and standard deviation of each LAB channel).  Applying them is written
here, batched, with torch on whatever device the tiles are (the GPU in the
encoder actors when there is one): torchstain's ``normalize`` estimates the
stain again from every single tile, which is noisy on tiles with little of
one stain (stroma-only tiles get a wrong haematoxylin vector) and costs an
eigen-decomposition per tile; estimating once per slide, as whole-slide
pipelines do, avoids both.  The mapping is torchstain's formula:

* Macenko: concentrations ``C = pinv(HE_slide) @ OD``, scaled by
  ``maxC_ref / maxC_slide``, image ``Io * exp(-HE_ref @ C)``;
* Reinhard: each LAB channel standardised with the slide's mean/sd and given
  the reference's (torchstain's rgb2lab/lab2rgb); glass (pixels whose optical
  density is below ``beta`` in some channel) is left as it is.

A stain is a float32 vector: Macenko ``[HE (3x2, column by column), maxC (2)]``
(8 values), Reinhard ``[LAB means (3), LAB sds (3)]`` (6 values).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np

from mmray.errors import InputError

METHODS = ("none", "macenko", "reinhard")
PARAM_SIZE = {"macenko": 8, "reinhard": 6}
MIN_PIXELS = 500  # fewer tissue pixels than this: no stain estimate


@dataclass(frozen=True)
class StainConfig:
    """The ``wsi.stain`` section."""

    method: Literal["none", "macenko", "reinhard"] = "none"
    reference_slides: int = 24  # slides (seeded sample) whose tissue pixels fit the cohort's reference
    fit_tiles: int = 8  # tissue tiles per slide its own stain is estimated from
    fit_px: int = 256  # their size in pixels, at fit_mpp
    fit_mpp: float = 1.0  # their resolution (nuclei are a few pixels wide at 1 um/px)
    max_fit_pixels: int = 60000  # tissue pixels kept per slide (seeded sample)
    io: float = 240.0  # transmitted light intensity (Macenko)
    alpha: float = 1.0  # angular percentile of the stain vectors (Macenko)
    beta: float = 0.15  # optical density below which a pixel is glass
    probe_tiles: int = 8  # tiles per slide also embedded without normalisation (site signature before/after)
    seed: int = 0

    def validate(self):
        if self.method not in METHODS:
            yield ("method", f"must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.reference_slides < 1 or self.fit_tiles < 1 or self.fit_px < 32 or self.max_fit_pixels < MIN_PIXELS:
            yield ("", f"reference_slides and fit_tiles must be at least 1, fit_px at least 32 and "
                       f"max_fit_pixels at least {MIN_PIXELS}")
        if self.fit_mpp <= 0 or not 0 < self.io <= 255 or not 0 < self.alpha < 50 or self.beta <= 0:
            yield ("", "fit_mpp and beta must be positive, io within (0, 255], alpha within (0, 50)")
        if self.probe_tiles < 0:
            yield ("probe_tiles", f"must be 0 or more, got {self.probe_tiles}")

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    def key(self) -> dict:
        """What makes two normalisations the same (with the reference itself, part of the embed key)."""
        out = dataclasses.asdict(self)
        out.pop("probe_tiles")
        return out


def tissue_pixels(tiles: np.ndarray, *, beta: float = 0.15, io: float = 240.0) -> np.ndarray:
    """(M, 3) uint8: pixels of (..., 3) uint8 ``tiles`` whose optical density is at least ``beta`` in every
    channel (torchstain's Macenko rule for what is not glass)."""
    px = np.asarray(tiles, np.uint8).reshape(-1, 3)
    od = -np.log((px.astype(np.float32) + 1.0) / io)
    return px[np.all(od >= beta, axis=1)]


def fit_params(pixels: np.ndarray, *, method: str, cfg: StainConfig = StainConfig()) -> np.ndarray:
    """The stain (float32 vector, see the module docstring) of (M, 3) uint8 tissue pixels, by torchstain."""
    import torch
    from torchstain.torch.normalizers import TorchMacenkoNormalizer, TorchReinhardNormalizer

    px = np.asarray(pixels, np.uint8).reshape(-1, 3)
    if len(px) < MIN_PIXELS:
        raise InputError(f"stain: {len(px)} tissue pixels, at least {MIN_PIXELS} are needed to estimate a stain")
    image = torch.from_numpy(np.ascontiguousarray(px.T.reshape(3, 1, -1)))  # a (3, 1, M) "image"
    if method == "macenko":
        norm = TorchMacenkoNormalizer()
        try:
            norm.fit(image, Io=cfg.io, alpha=cfg.alpha, beta=cfg.beta)
        except RuntimeError as e:  # too few pixels above beta, a degenerate covariance
            raise InputError(f"stain: Macenko estimate failed: {e}") from e
        he, max_c = norm.HERef.float(), norm.maxCRef.float()
        out = np.r_[he.T.reshape(-1).numpy(), max_c.numpy()].astype(np.float32)
    elif method == "reinhard":
        norm = TorchReinhardNormalizer()
        norm.fit(image)
        out = np.r_[norm.target_means.numpy(), norm.target_stds.numpy()].astype(np.float32)
    else:
        raise InputError(f"stain: no parameters for method {method!r} (one of {', '.join(PARAM_SIZE)})")
    if not np.all(np.isfinite(out)):
        raise InputError(f"stain: the {method} estimate is not finite ({out.tolist()})")
    return out


def normalise(tiles, src, ref, *, method: str, io: float = 240.0, beta: float = 0.15):
    """Tiles in the reference's stain: ``tiles`` (N, H, W, 3) uint8 torch tensor (any device), ``src`` (N, P)
    each tile's slide stain, ``ref`` (P,) the reference; returns (N, H, W, 3) uint8 on the same device."""
    import torch

    if method == "none":
        return tiles
    n, h, w, _ = tiles.shape
    src = torch.as_tensor(src, dtype=torch.float32, device=tiles.device).reshape(n, -1)
    ref = torch.as_tensor(ref, dtype=torch.float32, device=tiles.device).reshape(-1)
    x = tiles.reshape(n, h * w, 3).float()
    if method == "macenko":
        od = -torch.log((x + 1.0) / io)  # (N, HW, 3)
        he_src = src[:, :6].reshape(n, 2, 3).transpose(1, 2)  # (N, 3, 2): columns H, E
        he_ref = ref[:6].reshape(2, 3).T
        conc = torch.linalg.pinv(he_src) @ od.transpose(1, 2)  # (N, 2, HW)
        conc = conc * (ref[6:8].reshape(1, 2, 1) / src[:, 6:8].clamp_min(1e-6).reshape(n, 2, 1))
        out = io * torch.exp(-(he_ref @ conc))  # (N, 3, HW)
        out = out.transpose(1, 2)
    elif method == "reinhard":
        from torchstain.torch.utils import lab2rgb, rgb2lab

        lab = rgb2lab((x / 255.0).permute(2, 0, 1))  # (3, N, HW), OpenCV-style scaling
        scale = torch.tensor([2.55, 1.0, 1.0], device=tiles.device).reshape(3, 1, 1)
        shift = torch.tensor([0.0, 128.0, 128.0], device=tiles.device).reshape(3, 1, 1)
        lab = lab / scale - shift  # torchstain's lab_split
        mu_s, sd_s = src[:, :3].T.reshape(3, n, 1), src[:, 3:6].T.reshape(3, n, 1).clamp_min(1e-6)
        lab = (lab - mu_s) / sd_s * ref[3:6].reshape(3, 1, 1) + ref[:3].reshape(3, 1, 1)
        out = lab2rgb((lab + shift) * scale) * 255.0  # channels last: (N, HW, 3)
        glass = torch.any(-torch.log((x + 1.0) / io) < beta, dim=2, keepdim=True)
        out = torch.where(glass, x, out)
    else:
        raise InputError(f"stain: unknown method {method!r}; one of {', '.join(METHODS)}")
    return out.round_().clamp_(0, 255).to(torch.uint8).reshape(n, h, w, 3)


def normalise_numpy(tiles: np.ndarray, src: np.ndarray, ref: np.ndarray, *, method: str, io: float = 240.0,
                    beta: float = 0.15) -> np.ndarray:
    """:func:`normalise` for numpy (N, H, W, 3) uint8 tiles, on the CPU.

    Macenko in float32 numpy with the optical density of each uint8 value from a 256-entry table: the
    CPU nuclei tasks normalise one tile at a time, where torch's per-call overhead (and, in a fresh
    worker, its import) cost more than the arithmetic; Reinhard goes through :func:`normalise`.
    """
    if method == "none":
        return tiles
    if method == "macenko":
        n, h, w, _ = tiles.shape
        src = np.asarray(src, np.float32).reshape(n, -1)
        ref = np.asarray(ref, np.float32).reshape(-1)
        od_lut = (-np.log((np.arange(256, dtype=np.float32) + 1.0) / np.float32(io))).astype(np.float32)
        he_ref = ref[:6].reshape(2, 3)  # rows: H, E
        out = np.empty((n, h * w, 3), np.uint8)
        for i in range(n):
            od = od_lut[np.asarray(tiles[i]).reshape(-1, 3)]  # (HW, 3)
            he_src = src[i, :6].reshape(2, 3).T  # (3, 2): columns H, E
            conc = od @ np.linalg.pinv(he_src).T.astype(np.float32)  # (HW, 2)
            conc *= ref[6:8] / np.maximum(src[i, 6:8], 1e-6)
            rgb = conc @ he_ref
            np.exp(-rgb, out=rgb)
            rgb *= np.float32(io)
            np.rint(rgb, out=rgb)
            out[i] = np.clip(rgb, 0, 255)
        return out.reshape(n, h, w, 3)
    import torch

    with torch.inference_mode():
        return normalise(torch.from_numpy(np.ascontiguousarray(tiles)), src, ref, method=method, io=io,
                         beta=beta).numpy()


def colour_distance(a: np.ndarray, b: np.ndarray, *, beta: float = 0.15) -> float:
    """Mean CIE76 colour difference (Delta E, LAB) between the mean tissue colours of two uint8 images."""
    from skimage.color import rgb2lab

    means = [tissue_pixels(img, beta=beta).reshape(-1, 1, 3).mean(axis=0, keepdims=True) / 255.0 for img in (a, b)]
    la, lb = (rgb2lab(m).reshape(3) for m in means)
    return float(np.linalg.norm(la - lb))
