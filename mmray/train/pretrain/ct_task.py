"""The CT DINO task: tumour-centred 3D crops -> cut/flipped/rotated/jittered views -> the CT encoder (:class:`DinoTask`).

Training batches are rows of the CT study source (``image``, ``mask``:
``[B, n, n, n]``, :mod:`mmray.ingest.ct_source`); the backbone is the CT
encoder's own network (:func:`mmray.features.ct_encoder.create_model`, MONAI's
3D ResNet or ``cnn_small``), so the teacher's backbone weights load straight
into the ``ct_embedding`` actor pool.  The optional evaluation embeds a probe
set of whole crops (exactly as the encoder sees them later) and scores a
linear probe and a k-NN vote against a label of the store's labels group
(:mod:`mmray.train.pretrain.probe`).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from mmray.features.ct_encoder import CtEncoderConfig, create_model, embedding_dim
from mmray.train.pretrain.ct_config import Views3dConfig
from mmray.train.pretrain.loop import DinoTask
from mmray.train.pretrain.probe import probe_scores
from mmray.train.pretrain.tile_task import ProbeSet, embed_in_batches
from mmray.train.pretrain.views3d import CropViews


class CtDinoTask(DinoTask):
    """DINO on CT crops (module doc).  ``probe.inputs``: ``[N, 2, n, n, n]`` stacked image and mask."""

    name = "ct"

    def __init__(self, *, encoder: CtEncoderConfig, views: Views3dConfig, n_global: int = 2, n_local: int = 4,
                 probe: ProbeSet | None = None, seed: int = 0):
        self.encoder, self.views_cfg, self.probe, self.seed = encoder, views, probe, seed
        self.crop_views = CropViews(views, n_global=n_global, n_local=n_local)

    def build_backbone(self, *, drop_path_rate: float = 0.0):
        return create_model(self.encoder), embedding_dim(self.encoder)

    def views(self, batch, *, generator):
        return self.crop_views(batch["image"], batch["mask"], generator=generator)

    def evaluate(self, backbone, *, device) -> dict[str, float]:
        if self.probe is None or len(self.probe) == 0:
            return {}
        feats = embed_in_batches(backbone, self.probe.inputs, prepare=lambda x: torch.from_numpy(np.asarray(x)),
                                 device=device, batch_size=32)
        return probe_scores(feats, self.probe.labels, self.probe.groups, seed=self.seed)

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "encoder": {k: v for k, v in asdict(self.encoder).items()
                                               if k in ("name", "widen_factor", "seed")},
                "views": asdict(self.views_cfg), "probe_rows": 0 if self.probe is None else len(self.probe)}
