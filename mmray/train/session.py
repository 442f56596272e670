"""Where a training loop runs: inside Ray Train, or in one local process.

The per-worker loop (:mod:`mmray.train.ray_torch`) talks to a
:class:`Session` only: which rank it is, its data shard, the latest
checkpoint, and ``report(metrics, checkpoint_dir)``.  :class:`RayTrainSession`
forwards to ``ray.train`` (``get_dataset_shard``, ``get_checkpoint``,
``report`` with a ``Checkpoint.from_directory``); :class:`LocalSession` runs
the same loop in the calling process (world size 1) and keeps checkpoints
in a run folder, so a rerun resumes exactly like a Ray Train restart does.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch


class Session:
    """What a training loop may ask of the system running it."""

    world_rank: int = 0
    world_size: int = 1

    def dataset(self, name: str):
        """This worker's part of dataset ``name`` (anything with ``iter_batches``)."""
        raise NotImplementedError

    def device(self) -> torch.device:
        return torch.device("cpu")

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    @contextlib.contextmanager
    def restored(self) -> Iterator[Path | None]:
        """The latest checkpoint as a local folder, or None when starting fresh."""
        yield None

    def report(self, metrics: Mapping[str, Any], checkpoint_dir: str | None = None) -> None:
        raise NotImplementedError


class RayTrainSession(Session):
    """Inside ``train_loop_per_worker`` of a Ray Train trainer."""

    def __init__(self):
        import ray.train

        ctx = ray.train.get_context()
        self.world_rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()

    def dataset(self, name: str):
        import ray.train

        return ray.train.get_dataset_shard(name)

    def device(self) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device()

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        # find_unused_parameters: fallback heads (missing modalities) may sit out a step
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})

    @contextlib.contextmanager
    def restored(self) -> Iterator[Path | None]:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            yield None
            return
        with ckpt.as_directory() as d:
            yield Path(d)

    def report(self, metrics: Mapping[str, Any], checkpoint_dir: str | None = None) -> None:
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(dict(metrics), checkpoint=ckpt)


class LocalSession(Session):
    """One process, world size 1; checkpoints as ``<run_dir>/checkpoint_NNNNNN`` (the newest ``keep``)."""

    def __init__(self, run_dir: str | os.PathLike, datasets: Mapping[str, Any], *, keep: int = 2,
                 device: str | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.datasets = dict(datasets)
        self.keep = max(1, keep)
        self._device = torch.device(device or "cpu")
        self.reports: list[dict] = []
        existing = self.checkpoints()
        self._n = int(existing[-1].name.rsplit("_", 1)[1]) + 1 if existing else 0

    def dataset(self, name: str):
        return self.datasets[name]

    def device(self) -> torch.device:
        return self._device

    def checkpoints(self) -> list[Path]:
        return sorted(p for p in self.run_dir.glob("checkpoint_*") if p.is_dir() and not p.name.endswith(".tmp"))

    @contextlib.contextmanager
    def restored(self) -> Iterator[Path | None]:
        found = self.checkpoints()
        yield found[-1] if found else None

    def report(self, metrics: Mapping[str, Any], checkpoint_dir: str | None = None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint_dir is None:
            return
        final = self.run_dir / f"checkpoint_{self._n:06d}"
        tmp = final.with_name(final.name + ".tmp")
        shutil.copytree(checkpoint_dir, tmp)
        (tmp / ".metrics.json").write_text(json.dumps(dict(metrics), default=str))
        tmp.rename(final)  # a half-copied checkpoint is never picked up
        self._n += 1
        for old in self.checkpoints()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    @property
    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None
