"""Encoder registry, weights, identity and the encoder stage (in-process, CPU, small inputs)."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
import torch

from mmray.config import build
from mmray.errors import ConfigError, UnknownNameError
from mmray.features.encoders import (BUILTIN_DIMS, EncoderConfig, UnknownEncoderError, build_model, check_name,
                                     resolve)
from mmray.features.tile_pipeline import IMAGENET_MEAN, IMAGENET_STD, TileEncoder

SMALL = "resnet10t"


def pixels(n=4, px=64, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, px, px, 3), dtype=np.uint8)


def test_unknown_encoder_lists_builtins_and_points_to_timm():
    with pytest.raises(UnknownNameError) as info:
        check_name("resnet10")
    msg = str(info.value)
    assert "unknown encoder 'resnet10'" in msg
    assert "resnet50, resnet50_trunc, vit_small" in msg and "timm.list_models()" in msg
    assert "resnet10t" in msg  # a close timm name
    again = pickle.loads(pickle.dumps(info.value))
    assert isinstance(again, UnknownEncoderError) and str(again) == msg
    with pytest.raises(ConfigError, match=r"name: unknown encoder 'no_such_net'.*resnet50_trunc"):
        build(EncoderConfig, {"name": "no_such_net", "batch_size": 0})
    assert check_name("vit_small_patch16_224.dino") == "vit_small_patch16_224.dino"  # timm tags are fine


@pytest.mark.parametrize("name", sorted(BUILTIN_DIMS))
def test_builtin_encoders_have_their_dims(name):
    model, dim, notes = build_model(resolve(EncoderConfig(name=name, input_px=64)))
    assert dim == BUILTIN_DIMS[name] and notes and "RANDOM" in notes[0]
    if name == "resnet50_trunc":
        assert not hasattr(model, "layer4") and not hasattr(model, "fc")


def test_random_weights_are_deterministic_per_seed_and_warn(caplog):
    with caplog.at_level("WARNING"):
        spec = resolve(EncoderConfig(name=SMALL, input_px=64, seed=3))
    assert "RANDOM weights" in caplog.text and spec.encoder_id == f"{SMALL}@random-seed3"
    a, b = TileEncoder(spec), TileEncoder(spec)
    x = pixels()
    ea, eb = a.embed(x), b.embed(x)
    assert ea.shape == (4, 512) and ea.dtype == np.float32 and np.abs(ea).sum() > 0
    np.testing.assert_array_equal(ea, eb)
    other = TileEncoder(resolve(EncoderConfig(name=SMALL, input_px=64, seed=4))).embed(x)
    assert not np.allclose(ea, other)


def test_normalisation_and_resize_happen_inside_the_encoder():
    enc = TileEncoder(resolve(EncoderConfig(name=SMALL, input_px=48)))
    x = pixels(px=64)
    t = torch.from_numpy(x).permute(0, 3, 1, 2)  # on CPU the resize runs on uint8, like PIL's
    t = torch.nn.functional.interpolate(t, size=(48, 48), mode="bilinear", antialias=True, align_corners=False)
    t = t.float() / 255.0
    t = (t - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.inference_mode():
        want = enc.model(t).numpy()
    np.testing.assert_allclose(enc.embed(x), want, rtol=1e-4, atol=1e-5)


def test_weights_file_gives_the_in_memory_model_and_its_hash_is_the_identity(tmp_path):
    random_spec = resolve(EncoderConfig(name=SMALL, input_px=64, seed=7))
    model, _, _ = build_model(random_spec)
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    spec = resolve(EncoderConfig(name=SMALL, input_px=64, weights=str(path), seed=0))
    assert spec.encoder_id == f"{SMALL}@sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"
    x = pixels(seed=1)
    np.testing.assert_array_equal(TileEncoder(spec).embed(x), TileEncoder(random_spec).embed(x))
    other, _, _ = build_model(resolve(EncoderConfig(name=SMALL, input_px=64, seed=8)))
    path2 = tmp_path / "w2.pt"
    torch.save(other.state_dict(), path2)
    spec2 = resolve(EncoderConfig(name=SMALL, input_px=64, weights=str(path2)))
    assert spec2.encoder_id != spec.encoder_id
    assert not np.allclose(TileEncoder(spec2).embed(x), TileEncoder(spec).embed(x))


def test_checkpoint_dicts_prefixes_and_key_reports(tmp_path):
    model, _, _ = build_model(resolve(EncoderConfig(name=SMALL, input_px=64, seed=2)))
    state = {f"module.backbone.{k}": v for k, v in model.state_dict().items()}
    state["module.backbone.head.mlp.weight"] = torch.zeros(3, 3)  # a DINO projection head: not used
    ckpt = tmp_path / "dino.pth"
    torch.save({"teacher": state, "epoch": 100}, ckpt)
    loaded, _, notes = build_model(resolve(EncoderConfig(name=SMALL, input_px=64, weights=str(ckpt))))
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert not notes  # head.* is a classifier prefix: silently unused
    partial = {k: v for k, v in model.state_dict().items() if not k.startswith("layer4")}
    partial["stray.weight"] = torch.zeros(2)
    torch.save({"state_dict": partial}, tmp_path / "partial.pt")
    with pytest.raises(ConfigError, match=r"weight\(s\) missing from the file.*layer4.*strict_weights=false"):
        build_model(resolve(EncoderConfig(name=SMALL, input_px=64, weights=str(tmp_path / "partial.pt"))))
    _, _, notes = build_model(resolve(EncoderConfig(name=SMALL, input_px=64, weights=str(tmp_path / "partial.pt"),
                                                    strict_weights=False)))
    assert any("missing" in n and "layer4" in n for n in notes) and any("stray.weight" in n for n in notes)
    torch.save({"fc.weight": torch.zeros(5, 5)}, tmp_path / "alien.pt")
    with pytest.raises(ConfigError, match="no weight in the file matches"):
        build_model(resolve(EncoderConfig(name=SMALL, input_px=64, weights=str(tmp_path / "alien.pt"))))
    with pytest.raises(ConfigError, match="not found"):
        resolve(EncoderConfig(name=SMALL, weights=str(tmp_path / "missing.pt")))


def test_vit_small_resamples_position_embeddings_for_another_input_size(tmp_path):
    vit128, _, _ = build_model(resolve(EncoderConfig(name="vit_small", input_px=128, seed=1)))  # 8x8 patches
    torch.save({"model": vit128.state_dict()}, tmp_path / "vit.pt")
    vit64, dim, _ = build_model(resolve(EncoderConfig(name="vit_small", input_px=64, weights=str(tmp_path / "vit.pt"))))
    assert dim == 384 and vit64.pos_embed.shape == (1, 1 + 16, 384)
    assert torch.equal(vit64.blocks[0].attn.qkv.weight, vit128.blocks[0].attn.qkv.weight)


def test_weights_from_s3(s3_env, tmp_path):
    from mmray import uri

    model, _, _ = build_model(resolve(EncoderConfig(name=SMALL, input_px=64, seed=5)))
    local = tmp_path / "w.pt"
    torch.save(model.state_dict(), local)
    remote = f"{s3_env}/weights/w.pt"
    uri.write_bytes(remote, local.read_bytes())
    spec = resolve(EncoderConfig(name=SMALL, input_px=64, weights=remote))
    assert spec.encoder_id.endswith(hashlib.sha256(local.read_bytes()).hexdigest())
    x = pixels(seed=2)
    np.testing.assert_array_equal(TileEncoder(spec).embed(x),
                                  TileEncoder(resolve(EncoderConfig(name=SMALL, input_px=64, seed=5))).embed(x))
