"""Stain normalisation: a site-shifted tile maps back to the reference's colours; the batched mapping equals
torchstain's own per-image normalisation; the same on a GPU."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mmray.errors import InputError
from mmray.features import stain as S
from mmray.synth.latent import sample_patients
from mmray.synth.profiles import get_profile
from mmray.synth.slide_morphology import plan_slide
from mmray.synth.slides import _render_tile

TINY = get_profile("tiny")
CORNERS = [(768, 512), (1024, 768), (768, 768), (1024, 512), (512, 768), (1280, 768)]


def site_tiles(site: str, subtype: str = "adenocarcinoma") -> np.ndarray:
    """(6, 256, 256, 3) tiles of one planned slide stained as tissue source site ``site`` would.

    The plan's random draws do not depend on the site, so two sites give the same tissue in other colours.
    """
    patient = dataclasses.replace(sample_patients(1, profile=TINY, seed=0)[0], site=site, subtype=subtype,
                                  z_wsi=0.5, index=3)
    plan = plan_slide(patient, profile=TINY, rng=np.random.default_rng([1, 2, 3]))
    return np.stack([_render_tile(plan, np.random.default_rng([x, y]), y, x, tile_px=256) for x, y in CORNERS])


@pytest.fixture(scope="module")
def tiles():
    return {site: site_tiles(site) for site in ("05", "38", "44")}


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
@pytest.mark.parametrize("site", ["38", "44"])
def test_a_site_shifted_tile_maps_back_to_the_reference_colours(tiles, method, site):
    ref = S.fit_params(S.tissue_pixels(tiles["05"]), method=method)
    shifted = tiles[site]
    src = S.fit_params(S.tissue_pixels(shifted), method=method)
    back = S.normalise_numpy(shifted, np.tile(src, (len(shifted), 1)), ref, method=method)
    before, after = S.colour_distance(shifted, tiles["05"]), S.colour_distance(back, tiles["05"])
    assert before > 8.0  # the planted site shift is visible (Delta E of mean tissue colour)
    assert after < 0.5 * before, (before, after)
    assert back.dtype == np.uint8 and back.shape == shifted.shape


def test_macenko_pixels_come_closer_too(tiles):
    ref = S.fit_params(S.tissue_pixels(tiles["05"]), method="macenko")
    src = S.fit_params(S.tissue_pixels(tiles["38"]), method="macenko")
    back = S.normalise_numpy(tiles["38"], np.tile(src, (6, 1)), ref, method="macenko").astype(float)
    mae = lambda a: float(np.abs(a - tiles["05"].astype(float)).mean())  # noqa: E731
    assert mae(back) < 0.6 * mae(tiles["38"].astype(float))


def test_batched_macenko_equals_torchstain_on_each_tile(tiles):
    """With the stain estimated from the tile itself (all its pixels, as torchstain's normalize does), the
    batched mapping is torchstain's normalize, up to its truncation to integers."""
    from torchstain.torch.normalizers import TorchMacenkoNormalizer

    target = tiles["05"][0]
    norm = TorchMacenkoNormalizer()
    norm.fit(torch.from_numpy(target).permute(2, 0, 1))
    ref = np.r_[norm.HERef.T.reshape(-1).numpy(), norm.maxCRef.numpy()]
    for tile in tiles["38"][:3]:
        want = norm.normalize(torch.from_numpy(tile).permute(2, 0, 1), stains=False)[0].numpy()
        src = S.fit_params(tile.reshape(-1, 3), method="macenko")
        got = S.normalise_numpy(tile[None], src[None], ref, method="macenko")[0].astype(int)
        assert np.abs(got - want).max() <= 1


def test_numpy_macenko_equals_the_torch_mapping(tiles):
    ref = S.fit_params(S.tissue_pixels(tiles["05"]), method="macenko")
    src = np.tile(S.fit_params(S.tissue_pixels(tiles["44"]), method="macenko"), (6, 1))
    fast = S.normalise_numpy(tiles["44"], src, ref, method="macenko").astype(int)
    with torch.inference_mode():
        slow = S.normalise(torch.from_numpy(tiles["44"]), src, ref, method="macenko").numpy().astype(int)
    assert np.abs(fast - slow).max() <= 1 and (fast != slow).mean() < 0.01


def test_one_batch_mixes_slides_each_with_its_own_stain(tiles):
    ref = S.fit_params(S.tissue_pixels(tiles["05"]), method="macenko")
    stains = [S.fit_params(S.tissue_pixels(tiles[s]), method="macenko") for s in ("38", "44")]
    batch = np.concatenate([tiles["38"][:2], tiles["44"][:2]])
    src = np.stack([stains[0], stains[0], stains[1], stains[1]])
    together = S.normalise_numpy(batch, src, ref, method="macenko")
    alone = np.concatenate([S.normalise_numpy(tiles[s][:2], np.tile(st, (2, 1)), ref, method="macenko")
                            for s, st in zip(("38", "44"), stains)])
    np.testing.assert_array_equal(together, alone)


def test_none_is_the_identity_and_too_little_tissue_is_an_input_error(tiles):
    assert S.normalise_numpy(tiles["05"], np.zeros((6, 8)), np.zeros(8), method="none") is tiles["05"]
    glass = np.full((64, 64, 3), 240, np.uint8)
    with pytest.raises(InputError, match="tissue pixels"):
        S.fit_params(S.tissue_pixels(glass), method="macenko")
    problems = list(S.StainConfig(method="vahadane").validate())
    assert problems and "macenko" in problems[0][1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_normalisation_on_gpu_tensors_equals_cpu(tiles, method):
    ref = S.fit_params(S.tissue_pixels(tiles["05"]), method=method)
    src = np.tile(S.fit_params(S.tissue_pixels(tiles["38"]), method=method), (6, 1))
    cpu = S.normalise_numpy(tiles["38"], src, ref, method=method).astype(int)
    with torch.inference_mode():
        gpu = S.normalise(torch.from_numpy(tiles["38"]).cuda(), torch.from_numpy(src).cuda(), ref, method=method)
    assert gpu.device.type == "cuda"
    assert np.abs(gpu.cpu().numpy().astype(int) - cpu).max() <= 1
