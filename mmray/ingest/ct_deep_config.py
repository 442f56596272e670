"""The ``ct.deep`` section of the ingest YAML: deep CT features (crops -> 3D encoder -> ``ct_embedding``).

::

    ct:
      deep:
        enabled: false          # run ct_deep with the other modalities (modalities: []); naming it runs it anyway
        crop: {crop_mm: 64.0, spacing_mm: 2.0, window_hu: [-1000.0, 400.0]}
        encoder: {name: resnet10, widen_factor: 0.5, weights: null, batch_size: 8, ...}   # as wsi.encoder
        read: {num_cpus: 1.0, memory_mb: 1024, concurrency: null}  # one Ray Data read task per study
        read_resources: {}      # custom Ray resources per read task, e.g. {ingest_cpu: 1}
        encoder_resources: {}   # custom Ray resources per encoder actor, e.g. {ct_gpu: 0.5}
        object_store_limit_mb: null
        ssl: {enabled: false, ...}   # self-supervised weights, DINO on the cohort's crops (pretrain/ct_config)

The study reading settings (``segment_labels``, ``hu_dtype``, the tolerances,
``io_tries``, ``scratch_dir``) are the ``ct`` section's own, shared with radiomics,
so both paths read a study the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mmray.features.ct_crop import CropSpec
from mmray.features.ct_encoder import CtEncoderConfig
from mmray.train.pretrain.ct_config import CtSslConfig


@dataclass(frozen=True)
class CtReadConfig:
    """Ray Data read tasks of the study source (one study each)."""

    num_cpus: float = 1.0
    memory_mb: int = 1024  # a study's volume, SEG frames and crop; Ray schedules by it
    concurrency: int | None = None  # read tasks at once (default: as many as the CPUs allow)

    def validate(self):
        if self.num_cpus <= 0:
            yield ("num_cpus", f"must be > 0, got {self.num_cpus}")
        if self.memory_mb < 1:
            yield ("memory_mb", f"must be at least 1, got {self.memory_mb}")
        if self.concurrency is not None and self.concurrency < 1:
            yield ("concurrency", f"must be at least 1 or null, got {self.concurrency}")


@dataclass(frozen=True)
class CtDeepConfig:
    enabled: bool = False
    crop: CropSpec = field(default_factory=CropSpec)
    encoder: CtEncoderConfig = field(default_factory=CtEncoderConfig)
    read: CtReadConfig = field(default_factory=CtReadConfig)
    read_resources: dict[str, float] = field(default_factory=dict)
    encoder_resources: dict[str, float] = field(default_factory=dict)
    object_store_limit_mb: int | None = None
    ssl: CtSslConfig = field(default_factory=CtSslConfig)

    def validate(self):
        for section in ("read_resources", "encoder_resources"):
            for name, amount in getattr(self, section).items():
                if amount <= 0:
                    yield (f"{section}.{name}", f"must be > 0, got {amount}")
        if self.object_store_limit_mb is not None and self.object_store_limit_mb < 1:
            yield ("object_store_limit_mb", f"must be at least 1 MB or null, got {self.object_store_limit_mb}")
        if self.ssl.enabled and self.encoder.weights:
            yield ("ssl.enabled", "encoder.weights is set too: give weights or ask for self-supervised ones, "
                                  "not both")
