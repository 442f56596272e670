"""3D DINO views: sub-cubes at the crop's spacing (never zoomed), flips and axial quarter turns, intensity jitter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmray.train.pretrain.ct_config import Views3dConfig
from mmray.train.pretrain.views3d import CropViews


def _crops(b=3, n=16, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.random((b, n, n, n), dtype=np.float32)
    mask = (rng.random((b, n, n, n)) > 0.7).astype(np.uint8)
    return image, mask


def _found_in(view: np.ndarray, crop: np.ndarray) -> bool:
    """Whether ``view`` (s, s, s) is a sub-cube of ``crop`` under some flip/axial-rotation combination."""
    s, n = view.shape[0], crop.shape[0]
    for z in range(n - s + 1):
        for y in range(n - s + 1):
            for x in range(n - s + 1):
                sub = crop[z:z + s, y:y + s, x:x + s]
                for flips in np.ndindex(2, 2, 2):
                    f = np.flip(sub, [a for a in range(3) if flips[a]]) if any(flips) else sub
                    for k in range(4):
                        if np.array_equal(np.rot90(f, k, axes=(1, 2)), view):
                            return True
    return False


def test_views_are_cut_not_zoomed_and_keep_the_mask_binary():
    image, mask = _crops(b=2, n=10)
    cfg = Views3dConfig(global_vox=8, local_vox=5, intensity_scale=0, intensity_shift=0, noise_std=0)
    views = CropViews(cfg, n_global=2, n_local=3)(image, mask, generator=torch.Generator().manual_seed(3))
    assert [tuple(v.shape) for v in views] == [(2, 2, 8, 8, 8)] * 2 + [(2, 2, 5, 5, 5)] * 3
    for v in views:
        for i in range(2):
            assert _found_in(v[i, 1].numpy(), mask[i].astype(np.float32))  # the mask: a sub-cube, still 0/1
            assert _found_in(v[i, 0].numpy(), image[i])  # the image: the same voxels, not resampled


def test_views_are_reproducible_from_the_generator_and_vary_between_draws():
    image, mask = _crops()
    views = CropViews(Views3dConfig(global_vox=12, local_vox=6))
    a = views(image, mask, generator=torch.Generator().manual_seed(7))
    b = views(image, mask, generator=torch.Generator().manual_seed(7))
    c = views(image, mask, generator=torch.Generator().manual_seed(8))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_intensity_jitter_touches_the_image_channel_only_and_stays_in_range():
    image, mask = _crops(b=8)
    cfg = Views3dConfig(global_vox=16, local_vox=8, max_offset_fraction=0.0, flip=False, rot90=False,
                        intensity_scale=0.2, intensity_shift=0.1, noise_std=0.05)
    (v,) = CropViews(cfg, n_global=1, n_local=0)(image, mask, generator=torch.Generator().manual_seed(0))
    assert torch.equal(v[:, 1], torch.from_numpy(mask.astype(np.float32)))  # centred, unflipped: the whole crop
    assert float(v[:, 0].min()) >= 0.0 and float(v[:, 0].max()) <= 1.0
    diff = (v[:, 0] - torch.from_numpy(image)).abs().flatten(1).mean(1)
    assert float(diff.min()) > 0.005  # every crop got its own jitter


def test_a_crop_smaller_than_the_global_view_says_how_to_fix_it():
    image, mask = _crops(n=8)
    with pytest.raises(ValueError, match="global_vox"):
        CropViews(Views3dConfig(global_vox=12))(image, mask, generator=torch.Generator())
    assert [f for f, _ in Views3dConfig(global_vox=2).validate()] == ["global_vox"]
