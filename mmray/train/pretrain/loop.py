"""The DINO training loop on Ray Train (or in one process), generic over backbone, views and evaluation.

What varies between DINO setups is a :class:`DinoTask` (picklable; sent to every worker):

``build_backbone(drop_path_rate=...)``
    ``(nn.Module, embed_dim)``: ``[B, ...] -> [B, embed_dim]``; called twice (student, teacher);
``views(batch, generator=...)``
    the views of one numpy batch from the training dataset: a list of CPU tensors ``[B, ...]``,
    the ``dino.global_crops_number`` global views first (2D tile crops, crops of a grid of tile
    embeddings, 3D CT crops...);
``evaluate(backbone, device=...)``
    optional metrics of the teacher's backbone (e.g. a linear probe), run by rank 0 before the first
    epoch (the random initialisation's score) and after every epoch.

:func:`run_dino` is the per-worker loop against a :class:`~mmray.train.session.Session`:
student and teacher :class:`~mmray.models.dino.MultiCropWrapper` s, the
student in DDP when there are several workers (gloo on CPU, NCCL on GPU: Ray
Train sets the process group up), AdamW with the cosine schedules of
:mod:`~mmray.train.pretrain.schedules` set at every iteration, bf16/fp16
autocast on CUDA, per-tensor gradient clipping, last-layer freeze, EMA teacher.
Each epoch ends with a checkpoint written by rank 0 (``dino.pt``: student,
teacher, optimiser, loss centre, history, every rank's RNG state; ``spec.json``)
and reported to the session; a restarted worker group (Ray Train's
``FailureConfig``, e.g. after a worker was killed) resumes at the next epoch
with the same schedules and augmentation streams.  :func:`fit_dino` is the driver.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from mmray.errors import DataError
from mmray.models.dino import DINOHead, DINOLoss, MultiCropWrapper, cancel_last_layer_grads, clip_gradients, \
    ema_update, param_groups
from mmray.train.dist import all_gather_object
from mmray.train.epoch import rng_state, set_rng_state
from mmray.train.pretrain.dino_config import DinoConfig
from mmray.train.pretrain.schedules import Schedules
from mmray.train.session import LocalSession, RayTrainSession, Session

log = logging.getLogger(__name__)
STATE_FILE = "dino.pt"
FINAL = "final_checkpoint"
EXECUTORS = ("ray_train", "local")


class DinoTask:
    """What one DINO setup learns from (module doc); subclass and keep it picklable."""

    name: str = "dino"

    def build_backbone(self, *, drop_path_rate: float = 0.0) -> tuple[torch.nn.Module, int]:
        raise NotImplementedError

    def views(self, batch: Mapping[str, np.ndarray], *, generator: torch.Generator) -> list[torch.Tensor]:
        raise NotImplementedError

    def evaluate(self, backbone: torch.nn.Module, *, device: torch.device) -> dict[str, float]:
        return {}

    def describe(self) -> dict:
        """What identifies the task in ``spec.json`` (a resumed run must match it)."""
        return {"task": type(self).__name__}


@dataclass(frozen=True)
class DinoRunSpec:
    """One DINO run (picklable): the task, its settings, and how many iterations make an epoch.

    ``iters_per_epoch`` is every worker's number of steps per epoch (the
    driver computes it from the dataset's rows, the batch size and the worker
    count, so all workers step in lockstep); ``world_size`` sets the linear
    learning-rate scaling.  ``on_epoch`` (rank 0) receives each epoch's metrics,
    e.g. an MLflow logger.
    """

    task: DinoTask
    dino: DinoConfig
    iters_per_epoch: int
    world_size: int = 1
    shuffle_buffer_rows: int = 0  # local shuffle buffer of the training iterator (0: off)
    on_epoch: Callable[[dict], None] | None = None
    name: str = "dino"

    def key(self) -> dict:
        """What a checkpoint must match to be resumed (epochs may grow)."""
        d = {k: v for k, v in asdict(self.dino).items() if k != "epochs"}
        return {"dino": d, "task": self.task.describe(), "iters_per_epoch": self.iters_per_epoch,
                "world_size": self.world_size, "name": self.name}


def _autocast_dtype(precision: str, device: torch.device):
    if device.type != "cuda":
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


class DinoTrainer:
    """Student, teacher, loss, optimiser and schedules of one worker."""

    def __init__(self, spec: DinoRunSpec, *, device: torch.device, rank: int = 0, world_size: int = 1):
        cfg = spec.dino
        self.spec, self.cfg, self.device, self.rank, self.world = spec, cfg, device, rank, world_size
        torch.manual_seed(cfg.seed)  # the same initial weights on every worker
        s_backbone, dim = spec.task.build_backbone(drop_path_rate=cfg.drop_path_rate)
        t_backbone, _ = spec.task.build_backbone(drop_path_rate=0.0)

        def head():
            return DINOHead(dim, cfg.out_dim, hidden_dim=cfg.head_hidden_dim, bottleneck_dim=cfg.head_bottleneck_dim,
                            n_layers=cfg.head_layers, use_bn=cfg.use_bn_in_head, norm_last_layer=cfg.norm_last_layer)

        self.student = MultiCropWrapper(s_backbone, head()).to(device)
        self.teacher = MultiCropWrapper(t_backbone, head()).to(device)
        self.teacher.load_state_dict(self.student.state_dict())
        for p in self.teacher.parameters():
            p.requires_grad = False
        self.embed_dim = dim
        self.student_ddp = self.student
        if world_size > 1 and dist.is_available() and dist.is_initialized():
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.student_ddp = DDP(self.student, device_ids=[device.index] if device.type == "cuda" else None)
        self.loss = DINOLoss(cfg.out_dim, n_crops=cfg.n_crops, n_global=cfg.global_crops_number,
                             warmup_teacher_temp=cfg.warmup_teacher_temp, teacher_temp=cfg.teacher_temp,
                             warmup_teacher_temp_epochs=min(cfg.warmup_teacher_temp_epochs, cfg.epochs),
                             epochs=cfg.epochs, student_temp=cfg.student_temp,
                             center_momentum=cfg.center_momentum).to(device)
        self.opt = torch.optim.AdamW(param_groups(self.student))
        self.sched = Schedules.build(cfg, epochs=cfg.epochs, iters_per_epoch=spec.iters_per_epoch,
                                     total_batch=cfg.batch_size * spec.world_size)
        self.amp = _autocast_dtype(cfg.precision, device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None
        self.epoch = 0  # epochs finished
        self.attempt = 0
        self.history: list[dict] = []

    # ---- one epoch
    def train_epoch(self, batches) -> dict:
        """Train one epoch over ``batches`` (numpy dicts); returns its row of metrics."""
        cfg, e, n_global = self.cfg, self.epoch, self.cfg.global_crops_number
        self.student.train()
        self.teacher.train()  # as DINO: the teacher keeps its train-mode behaviour (no dropout in ViTs here)
        losses, steps, t0, wait = [], 0, time.perf_counter(), 0.0
        it = iter(batches)
        for step in range(self.spec.iters_per_epoch):
            t_wait = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                raise DataError(f"{self.spec.name}: the training data ran out after {step} of "
                                f"{self.spec.iters_per_epoch} steps in epoch {e + 1} on worker {self.rank}; the "
                                f"dataset changed while training?") from None
            wait += time.perf_counter() - t_wait
            g = torch.Generator().manual_seed(_stream_seed(cfg.seed, e, step, self.rank))
            views = [v.to(self.device, non_blocking=True) for v in self.spec.task.views(batch, generator=g)]
            if len(views) != cfg.n_crops:
                raise DataError(f"{self.spec.name}: the task made {len(views)} views, dino expects "
                                f"{cfg.global_crops_number} global + {cfg.local_crops_number} local")
            it_global = e * self.spec.iters_per_epoch + step
            for i, group in enumerate(self.opt.param_groups):
                group["lr"] = float(self.sched.lr[it_global])
                if i == 0:
                    group["weight_decay"] = float(self.sched.weight_decay[it_global])
            with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
                t_out = self.teacher(views[:n_global])
                s_out = self.student_ddp(views)
                loss = self.loss(s_out, t_out, e)
            if not math.isfinite(loss.item()):
                raise DataError(f"{self.spec.name}: DINO loss is {loss.item()} at epoch {e + 1}, step {step + 1}; "
                                f"lower dino.lr or raise dino.warmup_epochs")
            self.opt.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.opt)
            else:
                loss.backward()
            if cfg.clip_grad:
                clip_gradients(self.student, cfg.clip_grad)
            cancel_last_layer_grads(self.student, epoch=e, freeze_epochs=cfg.freeze_last_layer)
            if self.scaler is not None:
                self.scaler.step(self.opt)
                self.scaler.update()
            else:
                self.opt.step()
            ema_update(self.teacher, self.student, float(self.sched.momentum[it_global]))
            losses.append(loss.item())
            steps += 1
        seconds = time.perf_counter() - t0
        mean_loss = _all_mean(float(np.mean(losses)) if losses else float("nan"), self.device)
        last = e * self.spec.iters_per_epoch + max(steps - 1, 0)
        self.epoch += 1
        return {"epoch": self.epoch, "loss": mean_loss, "lr": float(self.sched.lr[last]),
                "weight_decay": float(self.sched.weight_decay[last]), "momentum": float(self.sched.momentum[last]),
                "teacher_temp": self.loss.teacher_temp(e), "steps": steps, "seconds": seconds,
                "data_wait_s": wait, "images_per_s": steps * self.cfg.batch_size * self.world / max(seconds, 1e-9),
                "attempt": self.attempt}

    def evaluate(self) -> dict:
        self.teacher.eval()
        try:
            with torch.no_grad():
                return {k: float(v) for k, v in self.spec.task.evaluate(self.teacher.backbone,
                                                                        device=self.device).items()}
        finally:
            self.teacher.train()

    # ---- checkpoints
    def state(self, *, rng_by_rank: list) -> dict:
        return {"student": self.student.state_dict(), "teacher": self.teacher.state_dict(),
                "optimizer": self.opt.state_dict(), "center": self.loss.center.detach().cpu(), "epoch": self.epoch,
                "attempt": self.attempt, "history": list(self.history), "rng": rng_by_rank,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "embed_dim": self.embed_dim}

    def load(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.opt.load_state_dict(state["optimizer"])
        self.loss.center.copy_(state["center"].to(self.device))
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.history = int(state["epoch"]), list(state["history"])
        self.attempt = int(state.get("attempt", 0)) + 1
        rngs = state.get("rng") or []
        if self.rank < len(rngs):
            set_rng_state(rngs[self.rank])


def _stream_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """The augmentation stream of one (epoch, step, rank): the same after a restart."""
    return int(np.random.SeedSequence([seed, epoch, step, rank]).generate_state(1)[0])


def _all_mean(x: float, device: torch.device) -> float:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item() / dist.get_world_size())


def _resumable(ckpt: Path, spec: DinoRunSpec) -> bool:
    try:
        old = json.loads((ckpt / "spec.json").read_text())
    except (OSError, ValueError):
        return False
    same = old == json.loads(json.dumps(spec.key(), default=str))
    if not same:
        log.warning("%s: checkpoint %s was written for other settings; training from scratch", spec.name, ckpt)
    return same


def run_dino(spec: DinoRunSpec, session: Session, *, heartbeat_dir: str | None = None) -> dict:
    """The per-worker loop (module doc) against any :class:`Session`; returns the last epoch's metrics."""
    tr = DinoTrainer(spec, device=session.device(), rank=session.world_rank, world_size=session.world_size)
    with session.restored() as ck:
        if ck is not None and _resumable(Path(ck), spec):
            tr.load(torch.load(Path(ck) / STATE_FILE, map_location=tr.device, weights_only=False))
            log.info("%s: resuming after epoch %d (attempt %d)", spec.name, tr.epoch, tr.attempt)
    if tr.epoch == 0 and not tr.history and session.world_rank == 0:
        row = {"epoch": 0, "attempt": tr.attempt, **tr.evaluate()}  # the random initialisation's score
        tr.history.append(row)
        if spec.on_epoch is not None:
            spec.on_epoch(row)
    data = session.dataset("train")
    metrics: dict = {"epoch": tr.epoch}
    while tr.epoch < spec.dino.epochs:
        if heartbeat_dir:
            _heartbeat(Path(heartbeat_dir), rank=session.world_rank, epoch=tr.epoch + 1, attempt=tr.attempt)
        kw: dict[str, Any] = {"batch_size": spec.dino.batch_size, "batch_format": "numpy", "drop_last": True}
        if spec.shuffle_buffer_rows:
            kw.update(local_shuffle_buffer_size=spec.shuffle_buffer_rows,
                      local_shuffle_seed=_stream_seed(spec.dino.seed, tr.epoch, 2**31 - 1, session.world_rank) % 2**31)
        row = tr.train_epoch(data.iter_batches(**kw))
        if session.world_rank == 0:
            row.update(tr.evaluate())
        tr.history.append(row)
        metrics = {**row, "world_size": session.world_size}
        rngs = all_gather_object(rng_state())
        with tempfile.TemporaryDirectory(prefix="mmray-dino-") as tmp:
            ckpt_dir = None
            if session.world_rank == 0:
                torch.save(tr.state(rng_by_rank=rngs), Path(tmp) / STATE_FILE)
                (Path(tmp) / "spec.json").write_text(json.dumps(spec.key(), default=str))
                ckpt_dir = tmp
                if spec.on_epoch is not None:
                    spec.on_epoch(row)
                log.info("%s: epoch %d/%d loss %.4f, %.1f images/s%s", spec.name, tr.epoch, spec.dino.epochs,
                         row["loss"], row["images_per_s"], "".join(f", {k} {v:.3f}" for k, v in row.items()
                                                                    if k.startswith("probe_")))
            session.report(metrics, ckpt_dir)
    return metrics


def _heartbeat(folder: Path, *, rank: int, epoch: int, attempt: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    beat = {"rank": rank, "pid": os.getpid(), "epoch": epoch, "attempt": attempt, "time_unix": time.time()}
    tmp = folder / f".rank{rank}.json.{os.getpid()}"
    tmp.write_text(json.dumps(beat))
    os.replace(tmp, folder / f"rank{rank}.json")  # readers never see half a file


def dino_loop_per_worker(config: dict) -> None:
    """``TorchTrainer`` entry: ``config = {"spec": DinoRunSpec, "threads": int, "heartbeat_dir": str | None}``."""
    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    run_dino(config["spec"], RayTrainSession(), heartbeat_dir=config.get("heartbeat_dir"))


# ------------------------------------------------------------------ driver
@dataclass
class DinoFit:
    """A finished DINO run: per-epoch history (epoch 0: before training), the final checkpoint folder."""

    history: list[dict]
    checkpoint: str
    seconds: float
    embed_dim: int
    notes: list[str] = field(default_factory=list)

    def load_state(self) -> dict:
        return torch.load(Path(self.checkpoint) / STATE_FILE, map_location="cpu", weights_only=False)


def iters_per_epoch(n_rows: int, *, batch_size: int, workers: int) -> int:
    """Steps each worker takes per epoch when ``n_rows`` are split equally over ``workers`` (last partial
    batch dropped); a :class:`DataError` when that is zero."""
    steps = (n_rows // max(workers, 1)) // batch_size
    if steps < 1:
        raise DataError(f"{n_rows} training rows give no full batch of {batch_size} on each of {workers} "
                        f"worker(s); lower dino.batch_size or add data")
    return steps


def fit_dino(spec: DinoRunSpec, *, train, run_dir: str | Path, executor: str = "ray_train", workers: int = 1,
             use_gpu: bool = False, cpus_per_worker: float = 1.0, max_failures: int = 1, keep: int = 2,
             threads: int | None = None, heartbeat_dir: str | Path | None = None) -> DinoFit:
    """Run ``spec`` over the ``train`` Ray Dataset on Ray Train (``workers`` DDP workers) or in this process.

    ``run_dir`` receives the checkpoints (``<run_dir>/final_checkpoint`` is the last one).  A folder that
    already holds a checkpoint of the same run (``executor: local``) or a Ray Train run of the same name
    resumes from it.
    """
    if executor not in EXECUTORS:
        raise DataError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    t0 = time.perf_counter()
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    threads = threads or max(1, int(round(cpus_per_worker)))
    if executor == "local":
        torch.set_num_threads(threads)
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        session = LocalSession(run_dir / "local", {"train": train}, keep=keep, device=device)
        run_dino(spec, session, heartbeat_dir=str(heartbeat_dir) if heartbeat_dir else None)
        if session.latest_checkpoint is None:
            raise DataError(f"{spec.name}: training produced no checkpoint")
        _copy_final(session.latest_checkpoint, run_dir)
    else:
        _fit_ray_train(spec, train=train, run_dir=run_dir, workers=workers, use_gpu=use_gpu,
                       cpus_per_worker=cpus_per_worker, max_failures=max_failures, keep=keep, threads=threads,
                       heartbeat_dir=heartbeat_dir)
    final = run_dir / FINAL
    state = torch.load(final / STATE_FILE, map_location="cpu", weights_only=False)
    return DinoFit(history=list(state["history"]), checkpoint=str(final), seconds=time.perf_counter() - t0,
                   embed_dim=int(state["embed_dim"]))


def _copy_final(src: str | Path, run_dir: Path) -> Path:
    """Copy a checkpoint folder to ``<run_dir>/final_checkpoint`` (whole or not at all)."""
    final, tmp = run_dir / FINAL, run_dir / f".{FINAL}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def _fit_ray_train(spec, *, train, run_dir: Path, workers, use_gpu, cpus_per_worker, max_failures, keep, threads,
                   heartbeat_dir) -> None:
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from mmray.train.ray_torch import poll_reports_fast

    poll_reports_fast()
    trainer = TorchTrainer(
        dino_loop_per_worker,
        train_loop_config={"spec": spec, "threads": threads,
                           "heartbeat_dir": str(heartbeat_dir) if heartbeat_dir else None},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker} if not use_gpu else None),
        datasets={"train": train}, dataset_config=DataConfig(datasets_to_split=["train"]),
        run_config=RunConfig(name="ray_train", storage_path=str(run_dir),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=keep)))
    try:
        result = trainer.fit()
    except Exception as e:  # TrainingFailedError: the workers' errors are in its message
        raise DataError(f"{spec.name}: Ray Train run in {run_dir} failed: {e}") from e
    if result.checkpoint is None:
        raise DataError(f"{spec.name}: training produced no checkpoint")
    with result.checkpoint.as_directory() as d:
        _copy_final(d, run_dir)

