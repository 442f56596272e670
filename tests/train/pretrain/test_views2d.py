"""Batched multi-crop views of RGB tiles: shapes, normalisation, determinism, per-sample randomness."""

from __future__ import annotations

import numpy as np
import torch

from mmray.features.tile_pipeline import IMAGENET_MEAN, IMAGENET_STD
from mmray.train.pretrain.views2d import MultiCrop, MultiCropConfig, _blur


def _tiles(n=6, px=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, px, px, 3), dtype=np.uint8)


def test_views_have_the_configured_sizes_and_repeat_with_the_same_generator():
    mc = MultiCrop(MultiCropConfig(global_px=32, local_px=16), n_global=2, n_local=3)
    pix = _tiles()
    a = mc(pix, generator=torch.Generator().manual_seed(5))
    b = mc(pix, generator=torch.Generator().manual_seed(5))
    c = mc(pix, generator=torch.Generator().manual_seed(6))
    assert [tuple(v.shape) for v in a] == [(6, 3, 32, 32)] * 2 + [(6, 3, 16, 16)] * 3
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert all(torch.isfinite(v).all() for v in a)


def test_plain_view_is_the_normalised_tile_and_a_crop_of_the_whole_tile_without_jitter_equals_it():
    cfg = MultiCropConfig(global_px=64, local_px=16, global_scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0,
                          jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0, 0.0, 0.0), solarize_p=0.0)
    mc = MultiCrop(cfg, n_global=2, n_local=0)
    pix = _tiles(3, 64)
    plain = mc.plain(pix)
    want = (torch.from_numpy(pix).permute(0, 3, 1, 2).float() / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) \
        / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(plain, want)
    views = mc(pix, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(views[0], want, atol=1e-4, rtol=1e-4)  # full box, same size: identity resample


def test_views_differ_between_samples_of_one_batch():
    mc = MultiCrop(MultiCropConfig(global_px=32, local_px=16), n_global=2, n_local=2)
    pix = np.repeat(_tiles(1), 8, axis=0)  # eight copies of one tile
    v = mc(pix, generator=torch.Generator().manual_seed(0))[2]
    flat = v.flatten(1)
    assert len({tuple(np.round(r.numpy()[:20], 4)) for r in flat}) == 8


def test_blur_preserves_a_constant_image_and_smooths_an_impulse():
    x = torch.full((2, 3, 9, 9), 0.5)
    torch.testing.assert_close(_blur(x, torch.tensor([1.0, 2.0])), x)
    imp = torch.zeros(1, 3, 15, 15)
    imp[..., 7, 7] = 1.0
    y = _blur(imp, torch.tensor([1.0]))
    assert y[0, 0, 7, 7] < 0.2 and abs(float(y.sum()) - 3.0) < 1e-4
