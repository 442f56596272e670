"""The GPU path of the tile encoder: device normalisation and resize, bf16/fp16 autocast, channels_last.

These run only with a CUDA GPU (``-m gpu``; benchmarks/gpu_check.sh runs them); elsewhere they skip.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmray.features.encoders import EncoderSpec
from mmray.features.tile_pipeline import TileEncoder

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _tiles(n: int = 16, px: int = 256) -> np.ndarray:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (n, px // 8, px // 8, 3), dtype=np.uint8)
    return np.repeat(np.repeat(base, 8, axis=1), 8, axis=2)  # blocky: resizes agree across devices


@pytest.mark.parametrize("name, precision", [("resnet50_trunc", "bf16"), ("resnet50_trunc", "fp16"),
                                             ("vit_small", "bf16")])
def test_gpu_embeddings_match_cpu_fp32(name, precision):
    spec = EncoderSpec(name=name, input_px=224)
    cpu = TileEncoder(spec, device="cpu")
    gpu = TileEncoder(spec, device="cuda", precision=precision, channels_last=True)
    assert gpu.device.type == "cuda" and gpu.dtype is not None and gpu.channels_last
    if name == "resnet50_trunc":
        conv = next(m for m in gpu.model.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = _tiles()
    a, b = cpu.embed(x), gpu.embed(x)
    assert b.dtype == np.float32 and b.shape == a.shape
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() > 0.99, cos


def test_gpu_encoder_batch_call_returns_the_arrow_rows():
    enc = TileEncoder(EncoderSpec(name="resnet50_trunc", input_px=224), device="cuda")
    n = 8
    batch = {"slide_id": np.array(["s"] * n, object), "patient_id": np.array(["p"] * n, object),
             "event_time": np.array(["2020-01-01"] * n, object), "scale": np.array(["tile"] * n, object),
             "x": np.arange(n), "y": np.zeros(n, int), "tile_px": np.full(n, 256), "size_l0": np.full(n, 256),
             "mpp": np.full(n, 0.5), "region_id": np.full(n, -1), "level": np.zeros(n, int),
             "tissue_fraction": np.ones(n, np.float32), "error": np.array([""] * (n - 1) + ["bad"], object),
             "pixels": _tiles(n)}
    table = enc(batch)
    emb = table.column("embedding").to_pylist()
    assert emb[-1] is None and all(len(e) == 1024 for e in emb[:-1])
