"""CT encoders: MONAI 3D ResNets that map (image, mask) tumour crops to embeddings, and their actor pool.

Input: ``(N, 2, n, n, n)`` float32, channel 0 the HU-windowed crop in [0, 1],
channel 1 the tumour mask (shape tells as much as texture).  Output:
``(N, dim)``, the globally pooled last block (``feed_forward=False``).

Same conventions as the tile encoders (:mod:`mmray.features.encoders`):
weights never come from the internet but from a local or ``s3://`` state
dict / checkpoint; the identity stored with every embedding is
``<name>@sha256:<hex of the weights file>`` or, without weights, a seeded
random initialisation ``<name>@random-seed<k>`` with a loud warning.  The
self-supervised option (:mod:`mmray.features.ct_ssl`) trains the weights on
the cohort's own crops and hands back such a file.

``ingest.ct.deep.encoder`` section (config keys as ``wsi.encoder``)::

    name: resnet10        # resnet10 | resnet18 | resnet34 (MONAI, 3D) | cnn_small (GroupNorm CNN)
    widen_factor: 0.5     # channel width x; 0.5 -> 256-d embeddings
    weights: null         # local path or s3:// URI; null: random (warned) or the SSL weights
    seed: 0
    strict_weights: true
    batch_size: 8
    pool_size: null       # default: one actor per GPU; CPU only: half the CPUs' worth
    device: auto          # auto | cuda | cpu
    num_gpus_per_actor: 1.0
    num_cpus_per_actor: 1.0
    cpu_threads: null
    precision: bf16       # autocast on CUDA; CPU runs fp32
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from mmray.errors import ConfigError, InputError, UnknownNameError
from mmray.features.encoders import read_weights, unwrap_checkpoint

log = logging.getLogger(__name__)
DEPTHS = {"resnet10": [1, 1, 1, 1], "resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3]}
# cnn_small: the pretraining stage's SmallCNN in 3D (GroupNorm, stride-2 stages; about half of resnet10's work)
ARCHITECTURES = (*DEPTHS, "cnn_small")
BASE_WIDTHS = (64, 128, 256, 512)  # x widen_factor
IN_CHANNELS = 2  # image, mask


@dataclass(frozen=True)
class CtEncoderConfig:
    name: str = "resnet10"
    widen_factor: float = 0.5
    weights: str | None = None
    seed: int = 0
    strict_weights: bool = True
    batch_size: int = 8
    pool_size: int | None = None
    device: Literal["auto", "cuda", "cpu"] = "auto"
    num_gpus_per_actor: float = 1.0
    num_cpus_per_actor: float = 1.0
    cpu_threads: int | None = None
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"

    def validate(self):
        if self.name not in ARCHITECTURES:
            yield ("name", str(UnknownNameError("CT encoder", self.name, list(ARCHITECTURES))))
        if self.widen_factor <= 0:
            yield ("widen_factor", f"must be > 0, got {self.widen_factor}")
        for f in ("batch_size", "pool_size", "cpu_threads"):
            if getattr(self, f) is not None and getattr(self, f) < 1:
                yield (f, f"must be at least 1, got {getattr(self, f)}")
        if self.num_gpus_per_actor <= 0 or self.num_cpus_per_actor < 0:
            yield ("num_gpus_per_actor", "must be positive (and num_cpus_per_actor 0 or more)")


@dataclass(frozen=True)
class CtEncoderSpec:
    """What a CT encoder actor needs (picklable, made on the driver)."""

    name: str = "resnet10"
    widen_factor: float = 0.5
    weights: str | None = None
    seed: int = 0
    strict_weights: bool = True
    weights_sha256: str | None = None
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def arch(self) -> str:
        return f"{self.name}-w{self.widen_factor:g}"

    @property
    def encoder_id(self) -> str:
        if self.weights is None:
            return f"{self.arch}@random-seed{self.seed}"
        if self.weights_sha256 is None:
            raise ConfigError([("ct.deep.encoder.weights", "CT encoder spec was not resolved; call resolve()")])
        return f"{self.arch}@sha256:{self.weights_sha256}"


def resolve(cfg: CtEncoderConfig, *, weights: str | None = None) -> CtEncoderSpec:
    """The spec with the weights' sha256 filled in; ``weights`` (e.g. SSL output) overrides ``cfg.weights``."""
    path = weights or cfg.weights
    base = dict(name=cfg.name, widen_factor=cfg.widen_factor, seed=cfg.seed, strict_weights=cfg.strict_weights)
    if path is None:
        note = (f"CT encoder {cfg.name} has RANDOM weights (seed {cfg.seed}): ct_embedding is deterministic but "
                f"carries no learned features; set ct.deep.encoder.weights or ct.deep.ssl.enabled=true")
        log.warning("!!! %s", note)
        return CtEncoderSpec(**base, notes=(note,))
    digest = hashlib.sha256(read_weights(path)).hexdigest()
    return CtEncoderSpec(**base, weights=path, weights_sha256=digest)


def create_model(spec: CtEncoderSpec | CtEncoderConfig):
    """A fresh (seeded) 3D network without classifier: (N, 2, n, n, n) -> (N, dim).

    MONAI's 3D ResNet (basic blocks, 3^3 stem at stride 1, max pool) or, for ``cnn_small``, the
    pretraining stage's :class:`~mmray.models.dino_backbones.SmallCNN` with ``spatial_dims=3``.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        if spec.name == "cnn_small":
            from mmray.models.dino_backbones import SmallCNN

            widths = tuple(max(8, int(w * spec.widen_factor)) for w in BASE_WIDTHS)
            return SmallCNN(in_chans=IN_CHANNELS, widths=widths, spatial_dims=3)
        from monai.networks.nets import ResNet

        return ResNet("basic", DEPTHS[spec.name], list(BASE_WIDTHS), spatial_dims=3,
                      n_input_channels=IN_CHANNELS, conv1_t_size=3, conv1_t_stride=1, no_max_pool=False,
                      widen_factor=spec.widen_factor, feed_forward=False)


def embedding_dim(spec: CtEncoderSpec | CtEncoderConfig) -> int:
    if spec.name == "cnn_small":
        return max(8, int(BASE_WIDTHS[-1] * spec.widen_factor))
    return int(BASE_WIDTHS[-1] * spec.widen_factor)


def build_model(spec: CtEncoderSpec):
    """``(model in eval mode on CPU, notes)``; deterministic for a spec."""
    import torch

    model = create_model(spec)
    notes = list(spec.notes)
    if spec.weights is not None:
        data = read_weights(spec.weights)
        digest = hashlib.sha256(data).hexdigest()
        if spec.weights_sha256 is not None and digest != spec.weights_sha256:
            raise InputError(f"CT encoder weights changed during the run (sha256 {digest[:12]}... != "
                             f"{spec.weights_sha256[:12]}...); rerun", item="ct encoder")
        try:
            state = unwrap_checkpoint(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError([("ct.deep.encoder.weights", f"not a torch checkpoint torch.load can read "
                                                           f"safely: {e}")]) from e
        own = model.state_dict()
        bad = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
        if bad:
            raise ConfigError([("ct.deep.encoder.weights", f"weights do not fit {spec.arch}: e.g. {bad[0]} "
                                                           f"{tuple(state[bad[0]].shape)} vs {tuple(own[bad[0]].shape)}")])
        result = model.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
        if missing and spec.strict_weights:
            raise ConfigError([("ct.deep.encoder.weights", f"{len(missing)} weight(s) of {spec.arch} missing from "
                                                           f"the file, e.g. {missing[:3]}; fix the file or set "
                                                           f"ct.deep.encoder.strict_weights=false")])
        if missing:
            notes.append(f"CT encoder {spec.arch}: {len(missing)} weight(s) missing from the file stay random")
    return model.eval(), notes


class CtEncoder:
    """Ray Data stage: crops -> embeddings (callable class for ``map_batches`` with an actor pool).

    ``batch``: ``image`` (N, n, n, n) float32, ``mask`` (N, n, n, n) uint8,
    plus metadata columns passed through; adds ``encoder_id`` and
    ``embedding`` (N, dim) float32 (zeros for rows whose ``status`` is not ``ok``: failed or reused
    studies travel through without pixels).  bf16/fp16 autocast on CUDA, fp32 on CPU.
    """

    def __init__(self, spec: CtEncoderSpec, *, device: str = "auto", precision: str = "bf16",
                 cpu_threads: int | None = None):
        import torch

        use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
        if device == "cuda" and not use_cuda:
            raise InputError("ct.deep.encoder.device is 'cuda' but this worker has no CUDA device", item="encoder")
        self.device = torch.device("cuda" if use_cuda else "cpu")
        if use_cuda:
            torch.backends.cudnn.benchmark = True  # one crop shape all run long: pick the fastest kernels once
        elif cpu_threads:
            torch.set_num_threads(cpu_threads)
        self.model, self.notes = build_model(spec)
        self.model.to(self.device)
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision) if use_cuda else None
        self.encoder_id = spec.encoder_id
        self.dim = embedding_dim(spec)

    def embed(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(N, n, n, n) image and mask -> (N, dim) float32."""
        import torch

        x = np.stack([np.asarray(image, np.float32), np.asarray(mask, np.float32)], axis=1)
        with torch.inference_mode():
            t = torch.from_numpy(x).to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
                out = self.model(t)
            return out.float().cpu().numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["image"])
        ok = (np.asarray(batch["status"], dtype=object) == "ok") if "status" in batch else np.ones(n, bool)
        emb = np.zeros((n, self.dim), np.float32)  # failed and skipped rows: zeros, never stored
        if ok.any():
            emb[ok] = self.embed(batch["image"][ok], batch["mask"][ok])
        out = {k: v for k, v in batch.items() if k not in ("image", "mask")}
        out["embedding"] = emb
        out["encoder_id"] = np.full(n, self.encoder_id, dtype=object)
        return out


def embedding_dataset(crops, *, spec: CtEncoderSpec, cfg: CtEncoderConfig,
                      resources: dict[str, float] | None = None):
    """``crops`` (a Ray Dataset of :mod:`mmray.ingest.ct_source` rows) through the CT encoder actor pool.

    Same pool rules as the tile encoders (:func:`mmray.features.tile_pipeline.use_gpu` / ``pool_size``): one
    actor per GPU when the cluster has GPUs (bf16/fp16 autocast), else CPU actors on half the CPUs.
    ``resources``: custom Ray resources per actor (e.g. ``{"ct_gpu": 0.5}``).
    """
    import ray.data

    from mmray.features.tile_pipeline import pool_size, use_gpu

    gpu = use_gpu(cfg, section="ct.deep.encoder")
    kwargs = {"spec": spec, "device": "cuda" if gpu else "cpu", "precision": cfg.precision,
              "cpu_threads": cfg.cpu_threads or max(1, int(round(cfg.num_cpus_per_actor)))}
    return crops.map_batches(CtEncoder, fn_constructor_kwargs=kwargs, batch_size=cfg.batch_size,
                             batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=pool_size(cfg, gpu=gpu)),
                             num_gpus=cfg.num_gpus_per_actor if gpu else 0, num_cpus=cfg.num_cpus_per_actor,
                             resources=resources or None)
