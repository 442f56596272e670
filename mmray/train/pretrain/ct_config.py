"""The ``ct.deep.ssl`` section: self-supervised CT encoder weights, DINO on the cohort's own tumour crops.

::

    ct:
      deep:
        ssl:
          enabled: false
          dino: {epochs: 30, batch_size: 16, out_dim: 4096, ...}   # mmray.train.pretrain.dino_config.DinoConfig
          views: {global_vox: 24, local_vox: 12, flip: true, rot90: true, intensity_scale: 0.1, ...}
          executor: local        # local (in the driver) | ray_train (TorchTrainer, DDP over `workers`)
          workers: 1
          use_gpu: false
          cpus_per_worker: 2.0   # torch threads per worker (local: of the driver)
          max_failures: 1        # Ray Train worker-group restarts (from the last epoch's checkpoint)
          probe_label: null      # a column of the store's labels group (e.g. subtype): linear probe each epoch
          workdir: null          # checkpoints; default <store>/_work/ct_ssl/<key> (local stores) or a temp dir

Defaults are sized for CPUs (a 4096-prototype head, 2 global + 4 local
views, 30 epochs); every DINO key of the slide pretraining stage is here too.
Nothing in this module imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mmray.train.pretrain.dino_config import DinoConfig


def ct_dino_defaults() -> DinoConfig:
    """DINO settings for 3D CT crops on CPUs: a smaller head and batch, fewer views and epochs than HIPT's."""
    return DinoConfig(epochs=30, batch_size=16, out_dim=4096, head_hidden_dim=512, head_bottleneck_dim=128,
                      warmup_epochs=3, warmup_teacher_temp=0.04, teacher_temp=0.04, lr=0.0005,
                      local_crops_number=4, drop_path_rate=0.0, freeze_last_layer=1)


@dataclass(frozen=True)
class Views3dConfig:
    """How views are cut from a crop (:mod:`mmray.train.pretrain.views3d`)."""

    global_vox: int = 24  # side of a global view, in crop voxels
    local_vox: int = 12  # side of a local view
    max_offset_fraction: float = 1.0  # of the free room (n - side) / 2 around the centre
    flip: bool = True
    rot90: bool = True
    intensity_scale: float = 0.1
    intensity_shift: float = 0.05
    noise_std: float = 0.01

    def validate(self):
        if self.global_vox < 4 or self.local_vox < 4:
            yield ("global_vox", f"views need at least 4 voxels a side, got {self.global_vox} and {self.local_vox}")
        if not 0 <= self.max_offset_fraction <= 1:
            yield ("max_offset_fraction", f"must be within [0, 1], got {self.max_offset_fraction}")
        for name in ("intensity_scale", "intensity_shift", "noise_std"):
            if getattr(self, name) < 0:
                yield (name, f"must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class CtSslConfig:
    enabled: bool = False
    dino: DinoConfig = field(default_factory=ct_dino_defaults)
    views: Views3dConfig = field(default_factory=Views3dConfig)
    executor: Literal["local", "ray_train"] = "local"
    workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 2.0
    max_failures: int = 1
    probe_label: str | None = None
    workdir: str | None = None

    def validate(self):
        if self.workers < 1:
            yield ("workers", f"must be at least 1, got {self.workers}")
        if self.cpus_per_worker <= 0:
            yield ("cpus_per_worker", f"must be > 0, got {self.cpus_per_worker}")
        if self.max_failures < 0:
            yield ("max_failures", f"must be >= 0, got {self.max_failures}")
