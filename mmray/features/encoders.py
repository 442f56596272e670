"""Tile encoders: a registry of image models that map RGB tiles to embeddings.

Built in:

* ``resnet50_trunc``: ResNet-50 up to ``layer3`` + global average pool, 1024-d (CLAM's encoder);
* ``resnet50``: ResNet-50 without its classifier, 2048-d;
* ``vit_small``: ViT-S/16 (the DINO architecture, timm ``vit_small_patch16_224``), 384-d;
* ``vit_tiny``: ViT-Ti/16 (timm ``vit_tiny_patch16_224``), 192-d;
* ``cnn_small``: :class:`mmray.models.dino_backbones.SmallCNN`, 128-d, the CPU backbone ``mmray pretrain``
  trains (its checkpoints load here by name);

and any timm architecture name (``timm.list_models()``), with its classifier
removed.  Weights never come from the internet: they come from a local file or
``s3://`` URI (a plain state dict, or a checkpoint dict holding it under
``state_dict``, ``model`` or ``teacher``; ``module.`` and ``backbone.``
prefixes are stripped), or, with no weights, from a seeded random
initialisation, with a loud warning.

An encoder's identity, stored with every embedding, is its name plus the
sha256 of the weights file (``resnet50_trunc@sha256:<hex>``) or the seed of
its random initialisation (``resnet50_trunc@random-seed0``).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import io
import logging
from dataclasses import dataclass, field
from typing import Literal

from mmray.errors import ConfigError, InputError, UnknownNameError

log = logging.getLogger(__name__)

BUILTIN_DIMS = {"resnet50_trunc": 1024, "resnet50": 2048, "vit_small": 384, "vit_tiny": 192, "cnn_small": 128}
_CHECKPOINT_KEYS = ("teacher", "state_dict", "model", "model_state_dict", "student")
_PREFIXES = ("module.", "backbone.", "encoder.", "model.")


class UnknownEncoderError(UnknownNameError):
    """An encoder name that is neither built in nor a timm architecture."""

    def __init__(self, name: str):
        super().__init__("encoder", name, list(BUILTIN_DIMS))
        close = difflib.get_close_matches(name, _timm_names(), n=3)
        hint = f" (close timm names: {', '.join(close)})" if close else ""
        self.args = (f"{self.args[0]}; or any timm model name listed by timm.list_models(){hint}",)


@functools.lru_cache(maxsize=1)
def _timm_names() -> tuple[str, ...]:
    import timm

    return tuple(timm.list_models())


def check_name(name: str) -> str:
    """``name`` if it is a built-in or timm encoder, else :class:`UnknownEncoderError`."""
    if name in BUILTIN_DIMS or name.split(".")[0] in _timm_names():
        return name
    raise UnknownEncoderError(name)


@dataclass(frozen=True)
class EncoderConfig:
    """The ``wsi.encoder`` section: which model, its weights, and how its actor pool runs."""

    name: str = "resnet50_trunc"
    weights: str | None = None  # local path, s3:// URI or registered encoder name; none: seeded random (warned)
    seed: int = 0  # random initialisation seed when there are no weights
    input_px: int = 224  # tiles are resized to this on the device
    strict_weights: bool = True  # missing weights are an error (else a warning)
    batch_size: int = 64
    pool_size: int | None = None  # encoder actors (default: one per GPU; CPU only: half the CPUs' worth)
    device: Literal["auto", "cuda", "cpu"] = "auto"  # auto: cuda when the Ray cluster has GPUs
    num_gpus_per_actor: float = 1.0
    num_cpus_per_actor: float = 1.0
    cpu_threads: int | None = None  # torch threads per CPU actor (default: num_cpus_per_actor)
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"  # autocast on GPU; CPU runs fp32
    channels_last: bool = True  # on GPU

    def validate(self):
        try:
            check_name(self.name)
        except UnknownNameError as e:
            yield ("name", str(e))
        for f in ("input_px", "batch_size", "pool_size"):
            if getattr(self, f) is not None and getattr(self, f) < 1:
                yield (f, f"must be at least 1, got {getattr(self, f)}")
        if self.num_gpus_per_actor <= 0 or self.num_cpus_per_actor < 0:
            yield ("num_gpus_per_actor", "must be positive (and num_cpus_per_actor 0 or more)")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            yield ("cpu_threads", f"must be at least 1 or null, got {self.cpu_threads}")


@dataclass(frozen=True)
class EncoderSpec:
    """What an encoder actor needs to build the model: picklable, made on the driver."""

    name: str
    weights: str | None = None
    seed: int = 0
    input_px: int = 224
    strict_weights: bool = True
    weights_sha256: str | None = None  # set by :func:`resolve`; actors check the bytes they load
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def encoder_id(self) -> str:
        if self.weights is None:
            return f"{self.name}@random-seed{self.seed}"
        if self.weights_sha256 is None:
            raise ConfigError([("wsi.encoder.weights", "encoder spec was not resolved; call resolve()")])
        return f"{self.name}@sha256:{self.weights_sha256}"


def read_weights(uri: str) -> bytes:
    """The bytes of a weights file (local or ``s3://``), retrying transient errors."""
    from mmray import uri as uri_mod
    from mmray.ingest.retry import with_retry

    try:
        return with_retry(lambda: uri_mod.read_bytes(uri), what=f"read encoder weights {uri}")
    except FileNotFoundError as e:
        raise ConfigError([("wsi.encoder.weights", f"weights file {uri} not found; give a local path or "
                                                   f"s3:// URI of a state dict or checkpoint")]) from e
    except OSError as e:
        raise ConfigError([("wsi.encoder.weights", f"cannot read weights file {uri}: {e}")]) from e


def resolve(cfg: EncoderConfig, *, store: str | None = None) -> EncoderSpec:
    """An :class:`EncoderSpec` with the weights' sha256 (the encoder identity) filled in.

    ``cfg.weights`` may also name an encoder ``mmray pretrain`` registered in MLflow (``dino_tiles``,
    ``dino_tiles@alias``, ``models:/dino_tiles/2``; the registry of ``store`` unless MLFLOW_TRACKING_URI
    says otherwise): it resolves to that version's ``encoder.pt``.
    """
    name = check_name(cfg.name)
    if cfg.weights is not None:
        from mmray.registry.encoders import resolve_weights

        cfg = dataclasses.replace(cfg, weights=resolve_weights(cfg.weights, store=store))
    if cfg.weights is None:
        note = (f"encoder {name} has RANDOM weights (seed {cfg.seed}): embeddings are deterministic but carry "
                f"no learned features; set wsi.encoder.weights to a state dict or checkpoint file")
        log.warning("!!! %s", note)
        return EncoderSpec(name=name, seed=cfg.seed, input_px=cfg.input_px, notes=(note,))
    digest = hashlib.sha256(read_weights(cfg.weights)).hexdigest()
    return EncoderSpec(name=name, weights=cfg.weights, seed=cfg.seed, input_px=cfg.input_px,
                       strict_weights=cfg.strict_weights, weights_sha256=digest)


# ---------------------------------------------------------------- models
def _resnet50_trunc():
    import torch.nn as nn
    import torchvision

    class ResNet50Trunc(nn.Module):
        """torchvision ResNet-50 through ``layer3`` then global average pooling: (N, 3, H, W) -> (N, 1024)."""

        def __init__(self):
            super().__init__()
            base = torchvision.models.resnet50(weights=None)
            self.conv1, self.bn1, self.relu, self.maxpool = base.conv1, base.bn1, base.relu, base.maxpool
            self.layer1, self.layer2, self.layer3 = base.layer1, base.layer2, base.layer3
            self.pool = nn.AdaptiveAvgPool2d(1)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer3(self.layer2(self.layer1(x)))
            return self.pool(x).flatten(1)

    return ResNet50Trunc(), ("layer4.", "fc.")


def _create(name: str, input_px: int):
    """``(model, prefixes of checkpoint keys the model does not use)``."""
    import timm
    import torch.nn as nn
    import torchvision

    if name == "resnet50_trunc":
        return _resnet50_trunc()
    if name == "resnet50":
        model = torchvision.models.resnet50(weights=None)
        model.fc = nn.Identity()
        return model, ("fc.",)
    if name == "cnn_small":
        from mmray.models.dino_backbones import SmallCNN

        return SmallCNN(), ()
    arch = {"vit_small": "vit_small_patch16_224", "vit_tiny": "vit_tiny_patch16_224"}.get(name, name)
    try:
        model = timm.create_model(arch, pretrained=False, num_classes=0, img_size=input_px)
    except TypeError:  # CNNs take any input size and no img_size argument
        model = timm.create_model(arch, pretrained=False, num_classes=0)
    head = model.pretrained_cfg.get("classifier") or "head"
    heads = head if isinstance(head, (list, tuple)) else (head,)
    return model, tuple(f"{h}." for h in heads) + ("head.", "fc.", "classifier.")


def unwrap_checkpoint(obj) -> dict:
    """The state dict inside a checkpoint, with ``module.``/``backbone.`` prefixes stripped."""
    for _ in range(3):  # e.g. {"teacher": {"state_dict": ...}}
        if isinstance(obj, dict):
            inner = next((obj[k] for k in _CHECKPOINT_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is not None and not any(hasattr(v, "shape") for v in obj.values()):
                obj = inner
    if not isinstance(obj, dict) or not obj:
        raise ConfigError([("wsi.encoder.weights", "the weights file holds no state dict (expected a dict of "
                                                   "tensors, or a checkpoint with 'state_dict', 'model' or "
                                                   "'teacher')")])
    out = {}
    for key, value in obj.items():
        if not hasattr(value, "shape"):
            continue
        for prefix in _PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def _fit_pos_embed(model, state: dict) -> None:
    """Resample a ViT checkpoint's position embedding to the model's input size."""
    pe = state.get("pos_embed")
    own = getattr(model, "pos_embed", None)
    if pe is None or own is None or pe.shape == own.shape:
        return
    from timm.layers import resample_abs_pos_embed

    prefix = getattr(model, "num_prefix_tokens", 1)
    grid = model.patch_embed.grid_size
    state["pos_embed"] = resample_abs_pos_embed(pe, new_size=list(grid), num_prefix_tokens=prefix)


def load_state(model, state: dict, *, name: str, unused_prefixes: tuple[str, ...], strict: bool) -> list[str]:
    """Load ``state`` into ``model``; returns notes. Missing weights raise unless ``strict`` is off."""
    _fit_pos_embed(model, state)
    own = model.state_dict()
    shape_bad = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if shape_bad:
        k = shape_bad[0]
        raise ConfigError([("wsi.encoder.weights", f"weights do not fit encoder {name}: {len(shape_bad)} tensor(s) "
                                                   f"have other shapes, e.g. {k} {tuple(state[k].shape)} vs "
                                                   f"{tuple(own[k].shape)}; is this checkpoint for another model?")])
    result = model.load_state_dict({k: v for k, v in state.items() if k not in shape_bad}, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    unexpected = [k for k in result.unexpected_keys if not k.startswith(unused_prefixes)]
    notes = []
    if len(missing) == len([k for k in own if not k.endswith("num_batches_tracked")]):
        raise ConfigError([("wsi.encoder.weights", f"no weight in the file matches encoder {name} (file keys "
                                                   f"e.g. {list(state)[:3]}, model keys e.g. {list(own)[:3]})")])
    if missing:
        msg = (f"encoder {name}: {len(missing)} weight(s) missing from the file (they stay random), e.g. "
               f"{missing[:5]}")
        if strict:
            raise ConfigError([("wsi.encoder.weights", msg + "; fix the file or set wsi.encoder.strict_weights=false")])
        notes.append(msg)
    if unexpected:
        notes.append(f"encoder {name}: {len(unexpected)} weight(s) in the file are not used by the model, "
                     f"e.g. {unexpected[:5]}")
    for n in notes:
        log.warning("%s", n)
    return notes


def build_model(spec: EncoderSpec):
    """``(model in eval mode on CPU, embedding dim, notes)``; deterministic for a spec."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model, unused = _create(spec.name, spec.input_px)
    notes = list(spec.notes)
    if spec.weights is not None:
        data = read_weights(spec.weights)
        digest = hashlib.sha256(data).hexdigest()
        if spec.weights_sha256 is not None and digest != spec.weights_sha256:
            raise InputError(f"encoder weights {spec.weights} changed during the run (sha256 {digest[:12]}... "
                             f"!= {spec.weights_sha256[:12]}...); rerun", item=spec.weights)
        try:
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as e:
            raise ConfigError([("wsi.encoder.weights", f"{spec.weights} is not a torch checkpoint torch.load "
                                                       f"can read safely: {e}")]) from e
        notes += load_state(model, unwrap_checkpoint(obj), name=spec.name, unused_prefixes=unused,
                            strict=spec.strict_weights)
    model.eval()
    with torch.inference_mode():
        dim = int(model(torch.zeros(1, 3, spec.input_px, spec.input_px)).shape[-1])
    return model, dim, notes
