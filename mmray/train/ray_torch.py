"""Torch models on Ray Train: the per-worker loop, its checkpoints, and the driver that launches it.

:func:`train_loop_per_worker` is what ``TorchTrainer`` runs on every worker
(DDP over gloo on CPU, NCCL on GPU).  Each epoch it trains on the worker's
shard of the ``train`` Ray Dataset (``ray.train.get_dataset_shard``), scores
the whole ``val`` dataset (an inner split of the training fold, never the test
fold; every worker sees all of it, so all ranks take the same early-stopping
decision), and reports with a checkpoint written by rank 0 from a temporary
folder::

    state.pt        model, best_model (early-stopping best), optimizer, epoch, attempt,
                    early-stopping state, history, every rank's RNG states
    spec.json       the TorchSpec (model, hparams, training settings)
    <extra files>   e.g. preprocess.pkl: the fitted fold preprocessing

At start the loop loads ``ray.train.get_checkpoint()`` (Ray Train hands the
latest one to the restarted worker group after a failure, up to
``FailureConfig(max_failures)``) and continues from the next epoch.  Losses
are the distributed-exact ones of :mod:`mmray.train.dist`, so W workers follow
the one-worker trajectory of the same global batches.

:func:`fit_torch` is the driver: Prepared fold data -> Ray Datasets ->
``TorchTrainer.fit()`` (``executor="ray_train"``) or the same loop in this
process (``executor="local"``, :class:`~mmray.train.session.LocalSession`),
then the best model from the final checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mmray.errors import DataError, MmrayError
from mmray.train import data as D
from mmray.train.dist import all_gather_object
from mmray.train.epoch import EpochTrainer, TorchSpec, rng_state
from mmray.train.loop_core import Predictions, predict
from mmray.train.session import LocalSession, RayTrainSession, Session

__all__ = [
    "TorchFit",
    "TorchSpec",
    "fit_torch",
    "load_checkpoint",
    "predict_columns",
    "run_loop",
    "train_loop_per_worker",
]

log = logging.getLogger(__name__)
EXECUTORS = ("ray_train", "local")


class InjectedFailure(MmrayError):
    """Raised once by the failure drill (``TorchSpec.fail_at_epoch``)."""


def run_loop(spec: TorchSpec, session: Session, *, extra_files: dict[str, bytes] | None = None,
             heartbeat_dir: str | None = None) -> dict:
    """The training loop (module doc) against any :class:`Session`; returns the last metrics.

    ``heartbeat_dir``: each worker rewrites ``rank<r>.json`` there as it starts an epoch (its pid, the
    epoch, the attempt): which process is which rank and how far it got (fault drills, hung runs).
    """
    tr = EpochTrainer(spec, device=session.device(), prepare=session.prepare_model, rank=session.world_rank)
    with session.restored() as ck:
        if ck is not None and _resumable(Path(ck), spec):
            tr.load(torch.load(Path(ck) / "state.pt", map_location=tr.device, weights_only=False))
            log.info("resuming %s from the checkpoint of epoch %d (attempt %d)", spec.model, tr.epoch, tr.attempt)
    train_src, val_src = session.dataset("train"), session.dataset("val")
    metrics: dict = {"epoch": tr.epoch, "attempt": tr.attempt}
    while not tr.stopped:
        if heartbeat_dir:
            _heartbeat(Path(heartbeat_dir), rank=session.world_rank, epoch=tr.epoch + 1, attempt=tr.attempt)
        _maybe_fail(spec, tr.epoch + 1)
        row = tr.step(train_src, val_src)
        metrics = {**row, "best_val_score": tr.stopper.best_score, "best_epoch": tr.stopper.best_epoch,
                   "stopped": tr.stopped, "world_size": session.world_size}
        rngs = all_gather_object(rng_state())  # every rank's dropout stream, so a restart continues each one
        with tempfile.TemporaryDirectory(prefix="mmray-ckpt-") as tmp:
            ckpt_dir = None
            if session.world_rank == 0:
                torch.save(tr.state(rng_by_rank=rngs), Path(tmp) / "state.pt")
                (Path(tmp) / "spec.json").write_text(spec.to_json())
                for name, blob in (extra_files or {}).items():
                    (Path(tmp) / name).write_bytes(blob)
                ckpt_dir = tmp
            session.report(metrics, ckpt_dir)
    return metrics


def _heartbeat(folder: Path, *, rank: int, epoch: int, attempt: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    beat = {"rank": rank, "pid": os.getpid(), "epoch": epoch, "attempt": attempt, "time_unix": time.time()}
    tmp = folder / f".rank{rank}.json.{os.getpid()}"
    tmp.write_text(json.dumps(beat))
    os.replace(tmp, folder / f"rank{rank}.json")  # readers never see half a file


# Fields that may change between a run and its continuation (train longer, drill off).
_RESUME_FREE = ("max_epochs", "patience", "fail_at_epoch", "fail_marker")


def _resumable(ckpt: Path, spec: TorchSpec) -> bool:
    """A checkpoint continues this fit only when it was written for the same model, data widths and settings."""
    try:
        old = json.loads((ckpt / "spec.json").read_text())
    except (OSError, ValueError):
        return False
    new = json.loads(spec.to_json())
    same = all(old.get(k) == v for k, v in new.items() if k not in _RESUME_FREE)
    if not same:
        log.warning("checkpoint %s was written for another configuration; training %s from scratch", ckpt,
                    spec.model)
    return same


def _maybe_fail(spec: TorchSpec, epoch: int) -> None:
    if spec.fail_at_epoch is None or epoch != spec.fail_at_epoch or not spec.fail_marker:
        return
    marker = Path(spec.fail_marker)
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"failure drill fired at epoch {epoch}\n")
    raise InjectedFailure(f"failure drill: worker stopped at epoch {epoch} (marker {marker})")


def train_loop_per_worker(config: dict) -> None:
    """``TorchTrainer`` entry: ``config = {"spec": TorchSpec, "extra_files": {...}, "threads": int}``."""
    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    run_loop(config["spec"], RayTrainSession(), extra_files=config.get("extra_files"),
             heartbeat_dir=config.get("heartbeat_dir"))


# ------------------------------------------------------------------ driver
@dataclass
class TorchFit:
    """A fitted model (best early-stopping weights, eval mode, CPU) and how it got there."""

    model: torch.nn.Module
    best_score: float
    best_epoch: int
    history: list[dict]
    checkpoint: str | None
    seconds: float


def load_checkpoint(path: str | Path, *, best: bool = True) -> tuple[torch.nn.Module, dict, TorchSpec]:
    """``(model with best (or last) weights, state, spec)`` from a checkpoint folder."""
    path = Path(path)
    raw = json.loads((path / "spec.json").read_text())
    spec = TorchSpec(**raw)
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    model = spec.build()
    model.load_state_dict(state["best_model"] if best else state["model"])
    model.eval()
    return model, state, spec


def fit_torch(spec: TorchSpec, *, train: dict, val: dict, run_dir: str | Path, executor: str = "ray_train",
              workers: int = 1, use_gpu: bool = False, max_failures: int = 1, keep: int = 2,
              tiles: dict | None = None, extra_files: dict[str, bytes] | None = None,
              threads_per_worker: int = 1, heartbeat_dir: str | Path | None = None) -> TorchFit:
    """Fit ``spec`` on ``train``/``val`` column dicts (:func:`mmray.train.data.prepared_columns`).

    ``tiles`` (:class:`~mmray.train.data.TileReader` kwargs) makes the
    datasets read tile bags from the store as they stream.  ``run_dir``
    receives Ray Train's run folder (checkpoints) or the local checkpoints;
    ``heartbeat_dir`` the workers' heartbeats (:func:`run_loop`).
    """
    if executor not in EXECUTORS:
        raise DataError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    t0 = time.perf_counter()
    run_dir = Path(run_dir).resolve()
    if spec.fail_at_epoch is not None and not spec.fail_marker:
        spec = dataclasses.replace(spec, fail_marker=str(run_dir.parent / f".{run_dir.name}.failure_drill"))
    if executor == "local":
        session = LocalSession(run_dir, {"train": _source(train, tiles), "val": _source(val, tiles)}, keep=keep,
                               device="cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        # The driver loop gets the threads a worker would (threads_per_worker): on a shared machine torch's
        # default (one thread per core) makes every small op wait on busy cores; measured at load ~25 on 2
        # cores, one fold of 4 epochs: attention fusion 24 s -> 8 s, mm_gnn 95 s -> 16 s with 1 thread.
        with torch_threads(threads_per_worker):
            run_loop(spec, session, extra_files=extra_files,
                     heartbeat_dir=str(heartbeat_dir) if heartbeat_dir else None)
        ckpt = session.latest_checkpoint
    else:
        ckpt = _fit_ray_train(spec, train=train, val=val, run_dir=run_dir, workers=workers, use_gpu=use_gpu,
                              max_failures=max_failures, keep=keep, tiles=tiles, extra_files=extra_files,
                              threads=threads_per_worker, heartbeat_dir=heartbeat_dir)
    if ckpt is None:
        raise DataError(f"{spec.model}: training produced no checkpoint (max_epochs={spec.max_epochs})")
    model, state, _ = load_checkpoint(ckpt)
    return TorchFit(model=model, best_score=float(state["stopper"]["best_score"]),
                    best_epoch=int(state["stopper"]["best_epoch"]), history=list(state["history"]),
                    checkpoint=str(ckpt), seconds=time.perf_counter() - t0)


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` torch threads (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _source(cols: dict, tiles: dict | None):
    """In-memory columns for tabular data; a Ray Dataset reading tile bags as it streams for MIL."""
    return cols if tiles is None else D.to_dataset(cols, tiles=tiles)


# Ray Train v2 hands each report to its controller through a queue of one, polled every
# RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default): with an epoch every fraction of a second, every
# per-epoch report would wait up to 2 s.  The driver's value propagates to the controller.
REPORT_POLL_S = "0.2"


def poll_reports_fast() -> None:
    """Lower Ray Train's controller poll interval for this process's runs (an explicit setting wins)."""
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", REPORT_POLL_S)


def _fit_ray_train(spec, *, train, val, run_dir, workers, use_gpu, max_failures, keep, tiles, extra_files,
                   threads, heartbeat_dir=None) -> Path | str:
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    poll_reports_fast()
    datasets = {"train": D.to_dataset(train, tiles=tiles), "val": D.to_dataset(val, tiles=tiles)}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec, "extra_files": extra_files or {}, "threads": threads,
                           "heartbeat_dir": str(heartbeat_dir) if heartbeat_dir else None},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
        datasets=datasets, dataset_config=DataConfig(datasets_to_split=["train"]),
        run_config=RunConfig(name=run_dir.name, storage_path=str(run_dir.parent),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=keep)))
    try:
        result = trainer.fit()
    except Exception as e:  # TrainingFailedError: the workers' errors are in its message
        raise DataError(f"Ray Train run {run_dir} failed: {e}") from e
    if result.checkpoint is None:
        return None
    local = run_dir / "final_checkpoint"
    with result.checkpoint.as_directory() as d:
        shutil.rmtree(local, ignore_errors=True)
        shutil.copytree(d, local)
    return local


def predict_columns(model: torch.nn.Module, cols, *, dims: dict[str, int], bag_dim: int | None = None,
                    batch_size: int = 256) -> Predictions:
    """Predictions of ``model`` over a column dict or Ray Dataset (in order for column dicts)."""
    return predict(model, (b for b, _ in D.batches(cols, batch_size=batch_size, modalities=model.modalities,
                                                    dims=dims, bag_dim=bag_dim)))
