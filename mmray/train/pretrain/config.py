"""The ``mmray pretrain`` job config (``ray_jobs/configs/pretrain.yaml``) as frozen dataclasses.

Sections: ``wsi`` (the tiling, exactly the keys of the ingest's ``wsi:``
section, so pretraining sees the tiles the slide encoder will embed),
``data`` (which tiles, how they are read), ``crops`` (multi-crop
augmentation), ``dino`` (:class:`~mmray.train.pretrain.dino_config.DinoConfig`),
``probe`` (held-out tiles with labels, scored every epoch), ``train``
(Ray Train workers), ``region`` (the 4096 level: ViT-4K over grids of tile
embeddings), ``mlflow``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mmray.train.pretrain.dino_config import DinoConfig
from mmray.train.pretrain.views2d import MultiCropConfig

REGION_GROUP = "wsi_regions_hipt"


@dataclass(frozen=True)
class TileDataConfig:
    """Which tissue tiles DINO sees and how they are read (the WSI plan and read stages)."""

    tiles_per_slide: int = 256  # seeded sample of each slide's tissue tiles per run (0: every tile)
    max_slides: int | None = None  # seeded subset of the cohort's slides (None: all)
    read_batch_size: int = 32  # tiles per read task (one slide per task)
    read_num_cpus: float = 1.0  # per read task; below 1 lets reads share a core with training workers
    read_concurrency: int | None = None  # read tasks at once (default: as many as the CPUs allow)
    cache: bool = False  # keep the decoded tiles in Ray's object store after epoch 1 (small cohorts)
    shuffle_buffer_batches: int = 4  # local shuffle buffer of the training iterator, in batches
    max_read_failure_fraction: float = 0.05  # tiles that may fail to read before an epoch runs short
    seed: int = 0

    def validate(self):
        if self.tiles_per_slide < 0:
            yield ("tiles_per_slide", f"must be >= 0 (0: every tile), got {self.tiles_per_slide}")
        if self.max_slides is not None and self.max_slides < 1:
            yield ("max_slides", f"must be >= 1 or null, got {self.max_slides}")
        if self.read_batch_size < 1 or self.shuffle_buffer_batches < 0:
            yield ("read_batch_size", "read_batch_size must be >= 1 and shuffle_buffer_batches >= 0")
        if self.read_num_cpus <= 0:
            yield ("read_num_cpus", f"must be > 0, got {self.read_num_cpus}")
        if not 0 <= self.max_read_failure_fraction < 1:
            yield ("max_read_failure_fraction", f"must be within [0, 1), got {self.max_read_failure_fraction}")


@dataclass(frozen=True)
class ProbeConfig:
    """Held-out slides whose tiles are embedded every epoch and scored against a label (never trained on)."""

    enabled: bool = True
    labels_group: str = "labels"  # a store group with patient_id and the label column
    label: str = "subtype"
    slides: int = 16  # held-out slides, spread over the label's classes
    tiles_per_slide: int = 16

    def validate(self):
        if self.slides < 2 or self.tiles_per_slide < 1:
            yield ("slides", "need at least 2 probe slides and 1 tile per slide")


@dataclass(frozen=True)
class PretrainTrainConfig:
    """Where the DINO loop runs."""

    executor: Literal["ray_train", "local"] = "ray_train"
    workers: int = 1  # DDP workers
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    threads_per_worker: int | None = None  # torch threads (default: cpus_per_worker rounded)
    max_failures: int = 1  # worker-group restarts from the last checkpoint
    keep_checkpoints: int = 2

    def validate(self):
        if self.workers < 1 or self.max_failures < 0 or self.keep_checkpoints < 1:
            yield ("workers", "workers and keep_checkpoints must be >= 1, max_failures >= 0")
        if self.cpus_per_worker <= 0:
            yield ("cpus_per_worker", f"must be > 0, got {self.cpus_per_worker}")


@dataclass(frozen=True)
class RegionConfig:
    """The 4096 level: DINO over ``G x G`` grids of tile embeddings of each region (``G = region_px / tile_px``),
    then one ``embed_dim`` vector per region into :data:`REGION_GROUP`.  HIPT: ViT-4K-256, 6 blocks, 6 heads,
    192-d, crops of 14 (global) and 6 (local) cells of a 16 x 16 grid."""

    enabled: bool = False
    embed_dim: int = 192
    depth: int = 6
    heads: int = 6
    global_cells: int | None = None  # default: round(14 / 16 * G)
    local_cells: int | None = None  # default: max(1, round(6 / 16 * G))
    min_tiles: int = 1  # regions with fewer tissue tiles are skipped
    dino: DinoConfig = field(default_factory=lambda: DinoConfig(batch_size=64, drop_path_rate=0.1))

    def validate(self):
        if self.embed_dim < 8 or self.depth < 1 or self.heads < 1 or self.embed_dim % self.heads:
            yield ("embed_dim", "embed_dim must be >= 8 and a multiple of heads; depth and heads >= 1")
        for name in ("global_cells", "local_cells"):
            v = getattr(self, name)
            if v is not None and v < 1:
                yield (name, f"must be >= 1 or null, got {v}")


@dataclass(frozen=True)
class PretrainMlflow:
    enabled: bool = True
    tracking_uri: str | None = None  # default: MLFLOW_TRACKING_URI, else sqlite in <store>/_mlflow
    workdir: str | None = None
    experiment: str = "mmray-pretrain"
    register: bool = True  # the encoder becomes a version of the registered model ``name``


@dataclass(frozen=True)
class PretrainConfig:
    """``mmray pretrain``: DINO on the cohort's own tissue tiles -> an encoder the slide stage loads."""

    cohort: str
    store: str
    name: str = "dino_tiles"  # registered model name and output folder prefix
    backbone: str = "vit_small"  # vit_small (HIPT) | vit_tiny | cnn_small (CPU) | a timm name
    output: str | None = None  # default <store>/_encoders/<name>-<key>
    workdir: str | None = None  # Ray Train run folders (default: <output>/runs, or ./mmray_work for s3://)
    force: bool = False  # train again even when the output holds a finished run with the same key
    embed: bool = False  # then embed the cohort's slides with it (new wsi_tiles / wsi_slide / wsi_patient versions)
    wsi: dict[str, Any] = field(default_factory=dict)  # the ingest's wsi section (tiling, tissue, read)
    data: TileDataConfig = field(default_factory=TileDataConfig)
    crops: MultiCropConfig = field(default_factory=MultiCropConfig)
    dino: DinoConfig = field(default_factory=DinoConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    train: PretrainTrainConfig = field(default_factory=PretrainTrainConfig)
    region: RegionConfig = field(default_factory=RegionConfig)
    mlflow: PretrainMlflow = field(default_factory=PretrainMlflow)

    def validate(self):
        from mmray.config import build
        from mmray.errors import ConfigError
        from mmray.ingest.wsi import WsiConfig
        from mmray.models.dino_backbones import TIMM_ALIASES

        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            yield ("name", f"use letters, digits, '_' and '-', got {self.name!r}")
        try:
            build(WsiConfig, self.wsi)
        except ConfigError as e:
            yield from [(f"wsi.{p}" if p else "wsi", m) for p, m in e.problems]
        if self.backbone not in ("cnn_small", *TIMM_ALIASES):
            import timm

            if self.backbone.split(".")[0] not in timm.list_models():
                yield ("backbone", f"unknown backbone {self.backbone!r}; valid: cnn_small, vit_small, vit_tiny or "
                                   f"a timm model name")
        if self.backbone.startswith("vit") and (self.crops.global_px % 16 or self.crops.local_px % 16):
            yield ("crops.global_px", f"ViT/16 crops must be multiples of 16 px, got global {self.crops.global_px}, "
                                      f"local {self.crops.local_px}")

    def wsi_config(self):
        from mmray.config import build
        from mmray.ingest.wsi import WsiConfig

        return build(WsiConfig, self.wsi)
