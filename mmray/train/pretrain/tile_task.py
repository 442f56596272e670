"""The 256-level DINO task: RGB tissue tiles -> multi-crop views -> a tile encoder (:class:`DinoTask`).

Training batches are rows of the WSI read stage (``pixels``: uint8
``[B, tile_px, tile_px, 3]``); the backbone is any name of
:func:`mmray.models.dino_backbones.build_image_backbone` (``vit_small`` as in
HIPT, ``vit_tiny`` or ``cnn_small`` on CPUs); the evaluation embeds a held-out
probe set of tiles with the teacher (whole tile resized to the global crop
size, exactly as the slide encoder later sees it) and scores a linear probe
and a k-NN vote against their labels (:mod:`mmray.train.pretrain.probe`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from mmray.models.dino_backbones import build_image_backbone
from mmray.train.pretrain.loop import DinoTask
from mmray.train.pretrain.probe import probe_scores
from mmray.train.pretrain.views2d import MultiCrop, MultiCropConfig


@dataclass(frozen=True)
class ProbeSet:
    """Held-out examples with labels: ``inputs`` ``[N, ...]`` (tile pixels here), ``labels`` ``[N]`` and
    ``groups`` ``[N]`` (the slide or patient of each, so folds never split one)."""

    inputs: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    label_name: str = "label"

    def __len__(self) -> int:
        return len(self.labels)


def embed_in_batches(backbone: torch.nn.Module, inputs: np.ndarray, *, prepare, device: torch.device,
                     batch_size: int = 128) -> np.ndarray:
    """``[N, D]`` float32 embeddings of ``inputs`` (``prepare``: numpy batch -> model input tensor)."""
    out = []
    for s in range(0, len(inputs), batch_size):
        x = prepare(inputs[s:s + batch_size]).to(device)
        out.append(backbone(x).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


class TileDinoTask(DinoTask):
    """DINO on RGB tiles (module doc)."""

    name = "tiles"

    def __init__(self, *, backbone: str, crops: MultiCropConfig, n_global: int = 2, n_local: int = 8,
                 probe: ProbeSet | None = None, column: str = "pixels", seed: int = 0):
        self.backbone, self.crops, self.column, self.probe, self.seed = backbone, crops, column, probe, seed
        self.multicrop = MultiCrop(crops, n_global=n_global, n_local=n_local)

    def build_backbone(self, *, drop_path_rate: float = 0.0):
        return build_image_backbone(self.backbone, input_px=self.crops.global_px, drop_path_rate=drop_path_rate)

    def views(self, batch, *, generator):
        return self.multicrop(batch[self.column], generator=generator)

    def embed(self, backbone: torch.nn.Module, pixels: np.ndarray, *, device: torch.device) -> np.ndarray:
        return embed_in_batches(backbone, pixels, prepare=self.multicrop.plain, device=device)

    def evaluate(self, backbone, *, device) -> dict[str, float]:
        if self.probe is None or len(self.probe) == 0:
            return {}
        feats = self.embed(backbone, self.probe.inputs, device=device)
        return probe_scores(feats, self.probe.labels, self.probe.groups, seed=self.seed)

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "backbone": self.backbone, "crops": asdict(self.crops), "column": self.column,
                "probe_rows": 0 if self.probe is None else len(self.probe)}
