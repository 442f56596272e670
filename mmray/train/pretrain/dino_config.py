"""The ``dino:`` section: every DINO hyperparameter, with HIPT's values as defaults.

HIPT (Chen et al., CVPR 2022; mahmoodlab/HIPT ``main_dino.py`` and
``main_dino4k.py``) pretrains its ViT-256 and ViT-4K with these settings;
each is a ``key=value`` override (``dino.epochs=5 dino.warmup_epochs=1``).
Nothing here depends on the input's shape: the same section drives DINO on
2D tiles, on grids of tile embeddings (the 4096 level) and on 3D CT crops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class DinoConfig:
    """DINO self-distillation settings (HIPT defaults)."""

    epochs: int = 100
    batch_size: int = 64  # per worker (HIPT: batch_size_per_gpu)
    # head
    out_dim: int = 65536  # prototypes
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_layers: int = 3
    use_bn_in_head: bool = False
    norm_last_layer: bool = True
    # teacher
    momentum_teacher: float = 0.996  # EMA momentum, cosine -> 1
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    student_temp: float = 0.1
    center_momentum: float = 0.9
    # optimisation (AdamW; lr scaled by total batch / 256)
    lr: float = 0.0005
    min_lr: float = 1e-6
    warmup_epochs: int = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0  # per-tensor gradient norm; 0: off
    freeze_last_layer: int = 1  # epochs with the head's last layer frozen
    drop_path_rate: float = 0.1  # stochastic depth of ViT students
    # crops (how they are cut is the augmentation's business; the loss needs the counts)
    global_crops_number: int = 2
    local_crops_number: int = 8
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"  # autocast on CUDA; CPU always runs fp32
    seed: int = 0

    @property
    def n_crops(self) -> int:
        return self.global_crops_number + self.local_crops_number

    def validate(self):
        for name in ("epochs", "batch_size", "out_dim", "head_hidden_dim", "head_bottleneck_dim", "head_layers",
                     "global_crops_number"):
            if getattr(self, name) < 1:
                yield (name, f"must be >= 1, got {getattr(self, name)}")
        if self.global_crops_number + self.local_crops_number < 2:
            yield ("local_crops_number", "DINO needs at least two views: give 2 global crops or some local ones")
        if self.local_crops_number < 0:
            yield ("local_crops_number", f"must be >= 0, got {self.local_crops_number}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            yield ("warmup_epochs", f"must be within [0, epochs={self.epochs}], got {self.warmup_epochs}")
        if not 0 <= self.warmup_teacher_temp_epochs <= self.epochs:
            yield ("warmup_teacher_temp_epochs", f"must be within [0, epochs={self.epochs}], got "
                                                 f"{self.warmup_teacher_temp_epochs}")
        if not 0 < self.momentum_teacher <= 1:
            yield ("momentum_teacher", f"must be within (0, 1], got {self.momentum_teacher}")
        if not 0 <= self.center_momentum < 1:
            yield ("center_momentum", f"must be within [0, 1), got {self.center_momentum}")
        for name in ("teacher_temp", "warmup_teacher_temp", "student_temp", "lr"):
            if getattr(self, name) <= 0:
                yield (name, f"must be > 0, got {getattr(self, name)}")
        for name in ("min_lr", "weight_decay", "weight_decay_end", "clip_grad", "freeze_last_layer",
                     "drop_path_rate"):
            if getattr(self, name) < 0:
                yield (name, f"must be >= 0, got {getattr(self, name)}")
