"""Pretrained encoders in the MLflow registry: per-epoch logging, registration, and lookup by name.

* :class:`EpochLogger`: logs a DINO run's per-epoch metrics (loss, images/s,
  schedules, probe scores) into an MLflow run as the run goes (picklable: the
  Ray Train rank-0 worker calls it).
* :func:`register_encoder`: logs ``encoder.pt`` (the teacher backbone's state
  dict, what :mod:`mmray.features.encoders` loads) as a pyfunc model
  (:class:`mmray.registry.encoder_pyfunc.EncoderPyfunc`: uint8 tiles ``[N, H, W, 3]`` -> embeddings) and
  makes it a version of the registered model, tagged with the encoder
  identity ``<arch>@sha256:<hex>``.
* :func:`resolve_weights`: ``wsi.encoder.weights`` may name a registered
  model (``name``, ``name@alias``, ``models:/name/3``): it resolves to the
  version's ``encoder.pt`` (a local path or ``s3://`` URI the encoder actors
  read), so ``ingest.wsi.encoder.weights=dino_tiles`` embeds with the latest
  pretrained encoder.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from mmray.errors import ConfigError, RegistryError
from mmray.registry.config import RegistryConfig, resolve_tracking

log = logging.getLogger(__name__)
TAG = "mmray."
MODEL_PATH = "encoder_model"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+(@[A-Za-z0-9_-]+)?$")


class EpochLogger:
    """``on_epoch(row)``: one MLflow step per epoch (epoch 0: before training)."""

    def __init__(self, tracking_uri: str, run_id: str, *, prefix: str = ""):
        self.tracking_uri, self.run_id, self.prefix = tracking_uri, run_id, prefix

    def __call__(self, row: dict) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Metric

        try:
            import time

            client = MlflowClient(tracking_uri=self.tracking_uri)
            now, step = int(time.time() * 1000), int(row.get("epoch", 0))
            metrics = [Metric(self.prefix + k, float(v), now, step) for k, v in row.items()
                       if k not in ("epoch", "attempt") and isinstance(v, (int, float)) and np.isfinite(v)]
            if metrics:
                client.log_batch(self.run_id, metrics=metrics)
        except Exception as e:  # tracking is not worth a failed training run
            log.warning("MLflow logging of epoch %s failed: %s", row.get("epoch"), e)


def tracking(cfg, *, store: str) -> tuple[str, str | None]:
    """``(tracking URI, artifact root)`` of a ``mlflow`` config section (same rules as the model registry)."""
    return resolve_tracking(RegistryConfig(tracking_uri=cfg.tracking_uri, workdir=cfg.workdir,
                                           experiment=cfg.experiment), store=store)


def start_run(cfg, *, store: str, run_name: str, params: dict, tags: dict) -> tuple[str, str]:
    """``(tracking URI, run id)`` of a new MLflow run in experiment ``cfg.experiment``."""
    from mmray.registry.registry import Registry

    reg = Registry(RegistryConfig(tracking_uri=cfg.tracking_uri, workdir=cfg.workdir, experiment=cfg.experiment),
                   store=store)
    run = reg.client.create_run(reg.experiment_id, run_name=run_name, tags={TAG + k: str(v) for k, v in tags.items()})
    from mlflow.entities import Param

    flat = [Param(k[:250], str(v)[:6000]) for k, v in params.items()]
    for s in range(0, len(flat), 100):
        reg.client.log_batch(run.info.run_id, params=flat[s:s + 100])
    return reg.tracking_uri, run.info.run_id


def register_encoder(*, tracking_uri: str, run_id: str, name: str, arch: str, input_px: int, encoder_path: str,
                     encoder_id: str, extra_tags: dict | None = None, register: bool = True) -> str | None:
    """Log ``encoder_path`` in run ``run_id`` (as ``encoder/encoder.pt`` and as a pyfunc model) and, with
    ``register``, make it a new version of registered model ``name``; returns the version (or None)."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from mmray.registry.encoder_pyfunc import EncoderPyfunc

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    tags = {TAG + "encoder_id": encoder_id, TAG + "arch": arch, TAG + "input_px": str(input_px),
            **{TAG + k: str(v) for k, v in (extra_tags or {}).items()}}
    try:
        client.log_artifact(run_id, encoder_path, "encoder")
        quiet = logging.getLogger("mlflow.pyfunc")
        level, quiet.level = quiet.level, logging.ERROR
        try:
            with tempfile.TemporaryDirectory(prefix="mmray-encoder-") as tmp:
                path = os.path.join(tmp, MODEL_PATH)
                mlflow.pyfunc.save_model(path, python_model=EncoderPyfunc(name=arch, input_px=input_px),
                                         artifacts={"encoder": encoder_path},
                                         pip_requirements=["torch", "timm", "numpy"])
                client.log_artifacts(run_id, path, MODEL_PATH)
        finally:
            quiet.setLevel(level)
        for k, v in tags.items():
            client.set_tag(run_id, k, v)
        if not register:
            return None
        try:
            client.create_registered_model(name, description="mmray pretrained tile encoder (DINO)")
        except MlflowException:
            pass  # exists
        source = f"{client.get_run(run_id).info.artifact_uri}/{MODEL_PATH}"
        mv = client.create_model_version(name, source=source, run_id=run_id, tags=tags)
        return str(mv.version)
    except MlflowException as e:
        raise RegistryError(f"cannot register encoder {name!r} in {tracking_uri}: {e}") from e


def looks_registered(weights: str) -> bool:
    """Whether ``wsi.encoder.weights`` names a registered model rather than a file."""
    if weights.startswith("models:/"):
        return True
    if weights.startswith("s3://") or os.sep in weights or "/" in weights or Path(weights).exists():
        return False
    return bool(_NAME.match(weights)) and not weights.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def resolve_weights(weights: str | None, *, store: str | None = None, tracking_uri: str | None = None) -> str | None:
    """A weights file for ``weights``: unchanged for a path or ``s3://`` URI; a registered model's
    ``encoder.pt`` for ``name``, ``name@alias`` or ``models:/name[/version|@alias]`` (module doc)."""
    if weights is None or not looks_registered(weights):
        return weights
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    ref = weights[len("models:/"):] if weights.startswith("models:/") else weights
    name, version, alias = ref, None, None
    if "@" in ref:
        name, alias = ref.split("@", 1)
    elif "/" in ref:
        name, version = ref.split("/", 1)
    uri = tracking_uri or resolve_tracking(RegistryConfig(), store=store)[0]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        if alias:
            mv = client.get_model_version_by_alias(name, alias)
        elif version:
            mv = client.get_model_version(name, version)
        else:
            found = client.search_model_versions(f"name = '{name}'")
            if not found:
                raise MlflowException(f"no versions of {name!r}")
            mv = max(found, key=lambda v: int(v.version))
        where = client.get_model_version_download_uri(name, mv.version)
    except MlflowException as e:
        raise ConfigError([("wsi.encoder.weights", f"{weights!r} is neither a weights file nor a registered encoder "
                                                   f"in {uri}: {e}; give a path, an s3:// URI or the name "
                                                   f"`mmray pretrain` registered")]) from e
    if where.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return os.path.join(unquote(urlparse(where).path), "artifacts", "encoder.pt")
    if where.startswith("s3://"):
        return f"{where.rstrip('/')}/artifacts/encoder.pt"
    local = client.download_artifacts(mv.run_id, "encoder/encoder.pt", tempfile.mkdtemp(prefix="mmray-enc-"))
    log.warning("encoder %s v%s downloaded to %s on this machine only: on a cluster give its s3:// URI instead",
                name, mv.version, local)
    return local


def version_tags(tracking_uri: str, name: str, version: str) -> dict:
    from mlflow import MlflowClient

    mv = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).get_model_version(name, version)
    return dict(mv.tags or {})


def dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=str)
