"""DINO pretraining throughput: a plain single-process PyTorch loop vs mmray's Ray Train loop (1 and 2 workers).

    .venv/bin/python benchmarks/bench_pretrain.py --json pretrain.json [--backbone cnn_small] [--epochs 3] \
        [--tiles 768] [--repeat 3] [--num-cpus 2] [--gpu]

The same model and data everywhere: ``--tiles`` random RGB tiles of ``--tile-px`` (content does not change
the cost), ``--backbone`` with a DINO head (``--out-dim`` prototypes), 2 global crops of ``--global-px`` and
``--local-crops`` local crops of ``--local-px`` from :class:`mmray.train.pretrain.views2d.MultiCrop`, batch
``--batch`` per worker, AdamW, per-tensor clipping, EMA teacher.

* ``baseline``: a plain loop written here (no Ray, no schedules, no checkpoints): numpy batches from the
  array in memory -> views -> student/teacher -> DINO loss -> step -> EMA, with ``--num-cpus`` torch threads.
* ``mmray``: :func:`mmray.train.pretrain.loop.fit_dino` on Ray Train with 1 worker holding ``--num-cpus``
  CPUs/threads, the tiles streamed from a (materialised) Ray Dataset, schedules set every step, a
  checkpoint written and reported every epoch.
* ``two_workers``: the same with 2 DDP workers (gloo) of ``--num-cpus / 2`` each.

Images/s of an epoch = images trained / that epoch's time (measured inside the training loop, data waits
included); the first epoch (warm-up: Ray Data, DDP, allocator) is reported apart and the headline is the
median of the later ones.  Wall seconds of each run (Ray Train's start, checkpoints) are reported too.
On a shared machine the load drifts within minutes, so the plain loop, 1 worker and 2 workers run in turn
``--repeat`` times and each ratio is the median of the per-round ratios (every round's figures are in the
JSON).  ``ratio`` = mmray / baseline images/s (goal: >= 0.9 on CPU).  With ``--gpu`` (and a CUDA device) also
``gpu_bf16``: 1 GPU worker with bf16 autocast, ``vit_small`` at 224/96 px (HIPT's setting).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmray.models.dino import (DINOHead, DINOLoss, MultiCropWrapper, clip_gradients,  # noqa: E402
                               ema_update, param_groups)
from mmray.train.pretrain.dino_config import DinoConfig  # noqa: E402
from mmray.train.pretrain.loop import DinoRunSpec, fit_dino, iters_per_epoch  # noqa: E402
from mmray.train.pretrain.tile_task import TileDinoTask  # noqa: E402
from mmray.train.pretrain.views2d import MultiCrop, MultiCropConfig  # noqa: E402


def _cfg(a, *, epochs=None) -> DinoConfig:
    return DinoConfig(epochs=epochs or a.epochs, batch_size=a.batch, out_dim=a.out_dim, head_hidden_dim=a.hidden,
                      head_bottleneck_dim=128, warmup_epochs=1, local_crops_number=a.local_crops,
                      drop_path_rate=0.0, precision="bf16")


def plain_loop(pixels: np.ndarray, a) -> dict:
    """The baseline (module doc): the DINO step with nothing around it."""
    from mmray.models.dino_backbones import build_image_backbone

    torch.set_num_threads(a.num_cpus)
    torch.manual_seed(0)
    cfg = _cfg(a)
    crops = MultiCrop(MultiCropConfig(global_px=a.global_px, local_px=a.local_px), n_local=a.local_crops)

    def net():
        bb, dim = build_image_backbone(a.backbone, input_px=a.global_px)
        return MultiCropWrapper(bb, DINOHead(dim, cfg.out_dim, hidden_dim=cfg.head_hidden_dim,
                                             bottleneck_dim=cfg.head_bottleneck_dim))

    student, teacher = net(), net()
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    loss_fn = DINOLoss(cfg.out_dim, n_crops=cfg.n_crops, epochs=cfg.epochs)
    opt = torch.optim.AdamW(param_groups(student), lr=1e-4, weight_decay=0.04)
    g = torch.Generator().manual_seed(0)
    steps = len(pixels) // a.batch
    per_epoch = []
    t_all = time.perf_counter()
    for epoch in range(a.epochs):
        order = np.random.default_rng(epoch).permutation(len(pixels))
        t0 = time.perf_counter()
        for s in range(steps):
            views = crops(pixels[order[s * a.batch:(s + 1) * a.batch]], generator=g)
            loss = loss_fn(student(views), teacher(views[:2]), epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            clip_gradients(student, 3.0)
            opt.step()
            ema_update(teacher, student, 0.996)
        per_epoch.append(steps * a.batch / (time.perf_counter() - t0))
    return _summary(per_epoch, wall_s=time.perf_counter() - t_all, workers=1, threads=a.num_cpus)


def ray_loop(ds, n: int, a, *, workers: int, workdir: Path, backbone=None, gpu=False, px=None) -> dict:
    cfg = _cfg(a)
    gpx, lpx = px or (a.global_px, a.local_px)
    task = TileDinoTask(backbone=backbone or a.backbone, crops=MultiCropConfig(global_px=gpx, local_px=lpx),
                        n_local=a.local_crops)
    spec = DinoRunSpec(task=task, dino=cfg, iters_per_epoch=iters_per_epoch(n, batch_size=a.batch, workers=workers),
                       world_size=workers, name="bench")
    cpus = a.num_cpus / workers
    t0 = time.perf_counter()
    fit = fit_dino(spec, train=ds, run_dir=workdir, workers=workers, use_gpu=gpu, cpus_per_worker=cpus,
                   threads=max(1, int(cpus)), max_failures=0, keep=1)
    per_epoch = [h["images_per_s"] for h in fit.history[1:]]
    return _summary(per_epoch, wall_s=time.perf_counter() - t0, workers=workers, threads=max(1, int(cpus)))


def _summary(per_epoch: list[float], *, wall_s: float, workers: int, threads: int) -> dict:
    later = per_epoch[1:] or per_epoch
    return {"images_per_s": statistics.median(later), "first_epoch_images_per_s": per_epoch[0],
            "per_epoch_images_per_s": [round(x, 2) for x in per_epoch], "wall_s": round(wall_s, 2),
            "workers": workers, "threads_per_worker": threads}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default=None)
    p.add_argument("--backbone", default="cnn_small")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--tiles", type=int, default=768)
    p.add_argument("--tile-px", type=int, default=128)
    p.add_argument("--global-px", type=int, default=64)
    p.add_argument("--local-px", type=int, default=32)
    p.add_argument("--local-crops", type=int, default=4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--out-dim", type=int, default=256)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3, help="rounds of (plain, 1 worker, 2 workers)")
    p.add_argument("--gpu", action="store_true", help="also bf16 images/s on one GPU (vit_small, 224/96 px)")
    a = p.parse_args()
    import ray

    pixels = np.random.default_rng(0).integers(0, 256, size=(a.tiles, a.tile_px, a.tile_px, 3), dtype=np.uint8)
    load = os.getloadavg()
    ray.init(num_cpus=a.num_cpus, num_gpus=1 if a.gpu and torch.cuda.is_available() else 0,
             include_dashboard=False, log_to_driver=False)
    ds = ray.data.from_items([{"pixels": x} for x in pixels], override_num_blocks=16).materialize()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="bench-pretrain-") as tmp:
        for r in range(a.repeat):
            base = plain_loop(pixels, a)
            one = ray_loop(ds, a.tiles, a, workers=1, workdir=Path(tmp) / f"w1-{r}")
            two = ray_loop(ds, a.tiles, a, workers=2, workdir=Path(tmp) / f"w2-{r}")
            rounds.append({"baseline": base, "mmray": one, "two_workers": two, "loadavg": os.getloadavg()})
            print(f"round {r + 1}: plain {base['images_per_s']:.1f}, Ray Train 1 worker {one['images_per_s']:.1f}, "
                  f"2 workers {two['images_per_s']:.1f} images/s (load {os.getloadavg()[0]:.1f})", flush=True)
        gpu = None
        if a.gpu and torch.cuda.is_available():
            big = np.random.default_rng(1).integers(0, 256, size=(a.tiles, 256, 256, 3), dtype=np.uint8)
            gds = ray.data.from_items([{"pixels": x} for x in big], override_num_blocks=16).materialize()
            gpu = ray_loop(gds, a.tiles, a, workers=1, workdir=Path(tmp) / "gpu", backbone="vit_small", gpu=True,
                           px=(224, 96))
            gpu["device"] = torch.cuda.get_device_name(0)
    ray.shutdown()

    def med(key):
        return statistics.median(r[key]["images_per_s"] for r in rounds)

    out = {"baseline": {"images_per_s": med("baseline")}, "mmray": {"images_per_s": med("mmray")},
           "ratio": statistics.median(r["mmray"]["images_per_s"] / r["baseline"]["images_per_s"] for r in rounds),
           "two_workers": {"images_per_s": med("two_workers")},
           "ratio_two_vs_one": statistics.median(r["two_workers"]["images_per_s"] / r["mmray"]["images_per_s"]
                                                 for r in rounds),
           "rounds": rounds, "gpu_bf16": gpu,
           "goal": "mmray (1 Ray Train worker) >= 0.9 x the plain loop's images/s on CPU",
           "settings": {k: v for k, v in vars(a).items() if k != "json"},
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_start": load,
                       "loadavg_end": os.getloadavg(), "torch": torch.__version__}}
    text = json.dumps(out, indent=2)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
