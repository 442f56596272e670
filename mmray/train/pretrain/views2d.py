"""DINO's multi-crop augmentation for RGB tiles, batched on tensors.

``MultiCropConfig`` (the ``crops:`` section) holds DINO's/HIPT's recipe:
2 global crops (``global_px``, area scale 0.4-1) and 8 local crops
(``local_px``, scale 0.05-0.4), each a random resized crop with aspect ratio
3/4-4/3, horizontal flip, colour jitter (brightness 0.4, contrast 0.4,
saturation 0.2, hue 0.1, applied with p 0.8), grayscale (p 0.2), Gaussian
blur (p 1.0 on the first global crop, 0.1 on the second, 0.5 on local crops)
and solarisation (p 0.2, second global crop), then ImageNet normalisation.

Written by hand rather than with torchvision's per-image transforms because
a DINO step needs ``10 x batch`` crops: here every operation runs once per
batch (crops and resizing in one ``torchvision.ops.roi_align`` call, averaging ``ceil(crop / px)^2`` samples per pixel,
per-sample jitter factors as broadcast tensors, blur as one grouped
convolution), which keeps CPU pretraining from being augmentation-bound.
Two approximations: jitter is applied in a fixed order (torchvision draws
one) and the hue shift is a rotation of the chroma plane in YIQ space (an
HSV hue shift for small angles).  All randomness comes from the generator
passed in, so a resumed run repeats the crops of the run it continues.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mmray.features.tile_pipeline import IMAGENET_MEAN, IMAGENET_STD

_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_RGB = torch.linalg.inv(_YIQ)
_GRAY = torch.tensor([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class MultiCropConfig:
    """The ``crops:`` section: DINO multi-crop augmentation (HIPT values at ``global_px`` 224, ``local_px`` 96)."""

    global_px: int = 224
    local_px: int = 96
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    ratio: tuple[float, float] = (0.75, 4 / 3)
    hflip: float = 0.5
    vflip: float = 0.0  # histology has no up: 0.5 adds vertical flips (HIPT: 0)
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5)  # first global, second global, local
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # at 224 px; scaled with the crop size
    solarize_p: float = 0.2  # second global crop

    def validate(self):
        if self.global_px < 8 or self.local_px < 8:
            yield ("global_px", "global_px and local_px must be at least 8")
        for name in ("global_scale", "local_scale", "ratio", "blur_sigma"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                yield (name, f"must be (low, high) with 0 < low <= high, got {getattr(self, name)}")
        if self.global_scale[1] > 1 or self.local_scale[1] > 1:
            yield ("global_scale", "crop scales are fractions of the tile's area: at most 1")
        for name in ("hflip", "vflip", "jitter_p", "grayscale_p", "solarize_p"):
            if not 0 <= getattr(self, name) <= 1:
                yield (name, f"must be a probability in [0, 1], got {getattr(self, name)}")


def _boxes(n: int, *, size: int, scale, ratio, g: torch.Generator) -> torch.Tensor:
    """``[n, 4]`` (x1, y1, x2, y2) random-resized-crop boxes in a ``size`` square (torchvision's rule, one try)."""
    area = size * size * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, generator=g))
    logr = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand(n, generator=g)
    r = torch.exp(logr)
    w = torch.sqrt(area * r).clamp(1, size)
    h = torch.sqrt(area / r).clamp(1, size)
    x = (size - w) * torch.rand(n, generator=g)
    y = (size - h) * torch.rand(n, generator=g)
    return torch.stack([x, y, x + w, y + h], 1)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample Gaussian blur of ``x [n, 3, H, W]`` with ``sigma [n]`` (pixels): one grouped separable conv."""
    n, c, h, w = x.shape
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    radius = min(radius, (min(h, w) - 1) // 2) or 1
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(t[None, :] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [n*c, 2r+1]
    y = x.reshape(1, n * c, h, w)
    y = F.pad(y, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


class MultiCrop:
    """``views(pixels uint8 [B, H, W, 3], generator) -> [global_1, global_2, local_1, ...]``, each float32
    ``[B, 3, px, px]`` normalised; see the module doc."""

    def __init__(self, cfg: MultiCropConfig, *, n_global: int = 2, n_local: int = 8):
        self.cfg, self.n_global, self.n_local = cfg, n_global, n_local
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def __call__(self, pixels: np.ndarray, *, generator: torch.Generator) -> list[torch.Tensor]:
        from torchvision.ops import roi_align

        cfg, g = self.cfg, generator
        x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float().div_(255.0)
        b, _, h, w = x.shape
        if h != w:
            raise ValueError(f"tiles must be square, got {h}x{w}")
        specs = [("global", i) for i in range(self.n_global)] + [("local", i) for i in range(self.n_local)]
        out = []
        for kind, i in specs:
            px = cfg.global_px if kind == "global" else cfg.local_px
            scale = cfg.global_scale if kind == "global" else cfg.local_scale
            boxes = _boxes(b, size=h, scale=scale, ratio=cfg.ratio, g=g)
            rois = torch.cat([torch.arange(b, dtype=torch.float32)[:, None], boxes], 1)
            v = roi_align(x, rois, output_size=(px, px), spatial_scale=1.0, sampling_ratio=0, aligned=True)
            blur_p = cfg.blur_p[min(i, 1)] if kind == "global" else cfg.blur_p[2]
            solar_p = cfg.solarize_p if (kind == "global" and i == 1) else 0.0
            out.append(self._photometric(v, g=g, px=px, blur_p=blur_p, solar_p=solar_p))
        return out

    def _photometric(self, v: torch.Tensor, *, g: torch.Generator, px: int, blur_p: float,
                     solar_p: float) -> torch.Tensor:
        cfg = self.cfg
        n = v.shape[0]

        def coin(p):
            return (torch.rand(n, generator=g) < p).view(n, 1, 1, 1)

        def factor(amount):
            return (1 + amount * (2 * torch.rand(n, generator=g) - 1)).view(n, 1, 1, 1)

        v = torch.where(coin(cfg.hflip), v.flip(-1), v)
        if cfg.vflip:
            v = torch.where(coin(cfg.vflip), v.flip(-2), v)
        jit = coin(cfg.jitter_p)
        j = v * factor(cfg.brightness)
        gray = (j * _GRAY.view(1, 3, 1, 1)).sum(1, keepdim=True)
        j = (j - gray.mean((2, 3), keepdim=True)) * factor(cfg.contrast) + gray.mean((2, 3), keepdim=True)
        gray = (j * _GRAY.view(1, 3, 1, 1)).sum(1, keepdim=True)
        j = gray + (j - gray) * factor(cfg.saturation)
        angle = (2 * math.pi * cfg.hue * (2 * torch.rand(n, generator=g) - 1))
        yiq = torch.einsum("ij,njhw->nihw", _YIQ, j)
        c, s = torch.cos(angle).view(n, 1, 1), torch.sin(angle).view(n, 1, 1)
        i_, q_ = yiq[:, 1], yiq[:, 2]
        yiq = torch.stack([yiq[:, 0], c * i_ - s * q_, s * i_ + c * q_], 1)
        j = torch.einsum("ij,njhw->nihw", _RGB, yiq).clamp_(0, 1)
        v = torch.where(jit, j, v)
        gray = (v * _GRAY.view(1, 3, 1, 1)).sum(1, keepdim=True).expand_as(v)
        v = torch.where(coin(cfg.grayscale_p), gray, v)
        if blur_p > 0:
            blur = coin(blur_p)
            lo, hi = cfg.blur_sigma
            sigma = (lo + (hi - lo) * torch.rand(n, generator=g)) * px / 224.0
            v = torch.where(blur, _blur(v, sigma.clamp(min=0.05)), v)
        if solar_p > 0:
            v = torch.where(coin(solar_p), torch.where(v >= 0.5, 1.0 - v, v), v)
        return (v - self.mean) / self.std

    def plain(self, pixels: np.ndarray) -> torch.Tensor:
        """The evaluation view: the whole tile resized to ``global_px``, normalised; ``[B, 3, px, px]``."""
        x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float().div_(255.0)
        px = self.cfg.global_px
        if x.shape[-1] != px:
            x = F.interpolate(x, size=(px, px), mode="bilinear", antialias=True, align_corners=False)
        return (x - self.mean) / self.std
