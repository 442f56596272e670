"""DINO views of 3D CT crops: sub-cubes at the crop's own spacing, flipped, rotated, intensity-jittered.

A training row is a tumour-centred crop (``image`` ``[n, n, n]`` in [0, 1],
``mask`` ``[n, n, n]``, :mod:`mmray.features.ct_crop`); a view is the
two-channel tensor ``[B, 2, s, s, s]`` (image, mask) of a random ``s``-voxel
sub-cube.  Views are *cut*, never zoomed: every voxel keeps the crop's
``spacing_mm``, so a view shows the tumour at its true physical size (the
strongest prognostic property of a tumour; DINO's random-resized crops would
teach the encoder to ignore it).  Then, independently per view:

* a random flip along each of the three axes (``p = 0.5``);
* a random multiple of 90 degrees in the axial (y, x) plane: a patient's
  left/right and anterior/posterior have no fixed meaning for a tumour;
* intensity jitter of the image channel: ``x * a + b`` with ``a`` in
  ``1 +- intensity_scale``, ``b`` in ``+- intensity_shift``, plus Gaussian
  noise of a random std up to ``noise_std``, clipped back to [0, 1].

The global views (``global_vox``) come first, then the local ones
(``local_vox``).  The sub-cube's position is uniform over the crop, but stays
within ``max_offset_fraction`` of the free room around the centre so a global
view keeps the tumour.  Written by hand on torch tensors rather than with
MONAI's per-sample dict transforms because every random draw must come from
the loop's ``torch.Generator`` (a resumed run then sees the same views).
"""

from __future__ import annotations

import numpy as np
import torch

from mmray.train.pretrain.ct_config import Views3dConfig


def _uniform(generator: torch.Generator, low: float, high: float, n: int) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


class CropViews:
    """``views(image, mask, generator)`` -> ``n_global`` + ``n_local`` tensors ``[B, 2, s, s, s]`` (module doc)."""

    def __init__(self, cfg: Views3dConfig, *, n_global: int = 2, n_local: int = 4):
        self.cfg, self.n_global, self.n_local = cfg, n_global, n_local

    @staticmethod
    def stack(image: np.ndarray, mask: np.ndarray) -> torch.Tensor:
        """``[B, 2, n, n, n]`` float32 of a batch of crops (the encoder's input, unaugmented)."""
        return torch.from_numpy(np.stack([np.asarray(image, np.float32), np.asarray(mask, np.float32)], axis=1))

    def __call__(self, image: np.ndarray, mask: np.ndarray, *, generator: torch.Generator) -> list[torch.Tensor]:
        x = self.stack(image, mask)
        n = x.shape[-1]
        if min(x.shape[-3:]) < self.cfg.global_vox:
            raise ValueError(f"crops of {tuple(x.shape[-3:])} voxels are smaller than the global views "
                             f"({self.cfg.global_vox}); lower ct.deep.ssl.views.global_vox or enlarge the crop")
        sizes = [self.cfg.global_vox] * self.n_global + [min(self.cfg.local_vox, n)] * self.n_local
        return [self._view(x, side, generator) for side in sizes]

    def _view(self, x: torch.Tensor, side: int, g: torch.Generator) -> torch.Tensor:
        cfg = self.cfg
        b, n = x.shape[0], x.shape[-1]
        room = (n - side) / 2.0
        centre = n / 2.0 + (torch.rand(b, 3, generator=g) * 2 - 1) * room * cfg.max_offset_fraction
        start = torch.clamp(torch.round(centre - side / 2.0), 0, n - side).long()
        flips = torch.rand(b, 3, generator=g) < 0.5 if cfg.flip else torch.zeros(b, 3, dtype=torch.bool)
        turns = torch.randint(0, 4, (b,), generator=g) if cfg.rot90 else torch.zeros(b, dtype=torch.long)
        out = []
        for i in range(b):
            z, y, w = start[i].tolist()
            v = x[i, :, z:z + side, y:y + side, w:w + side]
            dims = [d + 1 for d in range(3) if flips[i, d]]
            if dims:
                v = torch.flip(v, dims)
            if turns[i]:
                v = torch.rot90(v, int(turns[i]), dims=(2, 3))
            out.append(v)
        v = torch.stack(out).clone()
        scale = _uniform(g, 1 - cfg.intensity_scale, 1 + cfg.intensity_scale, b).view(b, 1, 1, 1)
        shift = _uniform(g, -cfg.intensity_shift, cfg.intensity_shift, b).view(b, 1, 1, 1)
        noise = _uniform(g, 0.0, cfg.noise_std, b).view(b, 1, 1, 1) * torch.randn(v[:, 0].shape, generator=g)
        v[:, 0] = torch.clamp(v[:, 0] * scale + shift + noise, 0.0, 1.0)
        return v
