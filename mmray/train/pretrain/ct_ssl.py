"""Self-supervised CT encoder weights: DINO on the cohort's own tumour crops, kept in the store.

:func:`ssl_weights` is what ``ct.deep.ssl.enabled`` runs before the embedding
pass of :mod:`mmray.ingest.ct_deep`:

1. look for weights trained earlier with the same settings (DINO, views,
   encoder architecture, crop, mask labels): ``<store>/_models/ct_ssl/<key>/``
   ``weights.pt`` + ``meta.json``; reuse them unless ``force``;
2. else stream every study through the study source (Ray Data read tasks:
   discovery, volume, SEG, crop) and materialise the crops (Ray's object
   store, which spills to disk: never in the driver);
3. train DINO on them (:func:`mmray.train.pretrain.loop.fit_dino`: in the
   driver or on Ray Train, per-epoch checkpoints under the work folder, so a
   killed run resumes), the task being :class:`~mmray.train.pretrain.ct_task.CtDinoTask`;
4. save the teacher's backbone as a plain state dict (``weights.pt``, loadable
   by :class:`mmray.features.ct_encoder.CtEncoder`, identity
   ``<arch>@sha256:<hex>``) with ``meta.json`` (loss per epoch, studies, time).

It hands back the materialised crops too, so the embedding pass encodes them
without reading the studies a second time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import posixpath
import tempfile
import time
from pathlib import Path

import numpy as np

from mmray import uri as uri_mod
from mmray.errors import DataError
from mmray.store import fsio

log = logging.getLogger(__name__)
MODELS_DIR = "_models/ct_ssl"
WORK_DIR = "_work/ct_ssl"
PROBE_MAX_ROWS = 512


def ssl_key(deep, settings) -> str:
    """Hash of everything the trained weights depend on besides the studies."""
    enc = deep.encoder
    blob = {"dino": dataclasses.asdict(deep.ssl.dino), "views": dataclasses.asdict(deep.ssl.views),
            "encoder": {"name": enc.name, "widen_factor": enc.widen_factor, "seed": enc.seed},
            "crop": deep.crop.digest(), "segment_labels": [s.casefold() for s in settings.segment_labels],
            "hu_dtype": settings.hu_dtype, "probe_label": deep.ssl.probe_label}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


class _EpochLog:
    """``on_epoch`` of the DINO run: a rate/ETA line per epoch (picklable: it may run on a Ray Train worker)."""

    def __init__(self, epochs: int):
        self.epochs, self.start = epochs, time.time()

    def __call__(self, row: dict) -> None:
        e = int(row.get("epoch", 0))
        if e == 0:
            self.start = time.time()
            return
        per = (time.time() - self.start) / e
        probe = "".join(f", {k} {v:.3f}" for k, v in row.items() if k.startswith("probe_"))
        logging.getLogger(__name__).info(
            "ct_ssl: epoch %d/%d, loss %.4f, %.1f crops/s, ETA %.0f s%s", e, self.epochs, row.get("loss", np.nan),
            row.get("images_per_s", np.nan), per * (self.epochs - e), probe)


def _probe(store, label: str | None, crops) -> object | None:
    """A :class:`ProbeSet` of up to PROBE_MAX_ROWS labelled crops (``label``: a column of the labels group)."""
    if not label:
        return None
    from mmray.train.pretrain.tile_task import ProbeSet

    if "labels" not in store.groups():
        raise DataError(f"ct.deep.ssl.probe_label={label!r} needs the store's labels group; ingest clinical first "
                        f"or set probe_label=null")
    labels = store.read_table("labels")
    if label not in labels.columns:
        raise DataError(f"ct.deep.ssl.probe_label={label!r} is not a column of the labels group; it has "
                        f"{sorted(labels.columns)}")
    by_patient = labels.dropna(subset=[label]).drop_duplicates("patient_id").set_index("patient_id")[label]
    inputs, ys, groups = [], [], []
    for batch in crops.iter_batches(batch_size=64, batch_format="numpy"):
        for pid, image, mask in zip(batch["patient_id"], batch["image"], batch["mask"]):
            if pid in by_patient.index and len(ys) < PROBE_MAX_ROWS:
                inputs.append(np.stack([image, mask.astype(np.float32)]))
                ys.append(str(by_patient[pid]))
                groups.append(pid)
    if len(set(ys)) < 2:
        return None
    return ProbeSet(inputs=np.stack(inputs).astype(np.float32), labels=np.array(ys), groups=np.array(groups),
                    label_name=label)


def _workdir(store, ssl, key: str) -> Path:
    if ssl.workdir:
        return Path(ssl.workdir) / key
    if not uri_mod.is_s3(store.uri):
        return Path(store.uri) / WORK_DIR / key
    return Path(tempfile.mkdtemp(prefix="mmray-ct-ssl-"))


def ssl_weights(ctx, *, jobs, settings):
    """``(weights URI, info dict for the lineage, materialised crops or None)`` (module doc)."""
    import torch

    from mmray.ingest.ct_deep import read_concurrency
    from mmray.ingest.ct_source import crop_dataset
    from mmray.train.pretrain.ct_task import CtDinoTask
    from mmray.train.pretrain.loop import DinoRunSpec, fit_dino, iters_per_epoch

    deep, store = ctx.config.deep, ctx.store
    ssl = deep.ssl
    key = ssl_key(deep, settings)
    fs, root = uri_mod.filesystem(store.uri)
    folder = posixpath.join(root.rstrip("/"), MODELS_DIR, key)
    weights_path, meta_path = posixpath.join(folder, "weights.pt"), posixpath.join(folder, "meta.json")
    weights_uri = uri_mod.join(store.uri, MODELS_DIR, key, "weights.pt")
    if not ctx.force and fsio.exists(fs, weights_path) and fsio.exists(fs, meta_path):
        meta = fsio.get_json(fs, meta_path)
        meta["notes"] = [f"self-supervised CT encoder reused ({MODELS_DIR}/{key}: DINO on {meta['studies']} studies, "
                         f"final loss {meta['final_loss']:.4f})"]
        return weights_uri, meta, None
    t0 = time.perf_counter()
    log.info("ct_ssl: reading and cropping %d studies for self-supervised training", len(jobs))
    crops = crop_dataset(jobs, settings=settings, spec=deep.crop, patient_key=ctx.patient_key, deep_hash_="",
                         num_cpus=deep.read.num_cpus, memory_mb=deep.read.memory_mb,
                         concurrency=read_concurrency(deep), resources=deep.read_resources).materialize()
    train = crops.filter(lambda row: row["status"] == "ok").select_columns(["patient_id", "image", "mask"])
    train = train.materialize()
    n = train.count()
    read_s = time.perf_counter() - t0
    dino = ssl.dino
    if n < dino.batch_size * ssl.workers:
        raise DataError(f"ct.deep.ssl: {n} readable studies give no batch of {dino.batch_size} on each of "
                        f"{ssl.workers} worker(s); lower ct.deep.ssl.dino.batch_size or disable ct.deep.ssl")
    task = CtDinoTask(encoder=deep.encoder, views=ssl.views, n_global=dino.global_crops_number,
                      n_local=dino.local_crops_number, probe=_probe(store, ssl.probe_label, train), seed=dino.seed)
    spec = DinoRunSpec(task=task, dino=dino, iters_per_epoch=iters_per_epoch(n, batch_size=dino.batch_size,
                                                                              workers=ssl.workers),
                       world_size=ssl.workers, shuffle_buffer_rows=min(n, 256), on_epoch=_EpochLog(dino.epochs),
                       name="ct_ssl")
    fit = fit_dino(spec, train=train, run_dir=_workdir(store, ssl, key), executor=ssl.executor, workers=ssl.workers,
                   use_gpu=ssl.use_gpu, cpus_per_worker=ssl.cpus_per_worker, max_failures=ssl.max_failures,
                   threads=max(1, int(round(ssl.cpus_per_worker))))
    state = fit.load_state()
    backbone = {k[len("backbone."):]: v for k, v in state["teacher"].items() if k.startswith("backbone.")}
    buf = io.BytesIO()
    torch.save({"state_dict": backbone}, buf)
    history = [{k: v for k, v in row.items() if isinstance(v, (int, float))} for row in fit.history]
    losses = [row["loss"] for row in history if "loss" in row]
    meta = {"key": key, "studies": n, "epochs": dino.epochs, "final_loss": float(losses[-1]) if losses else None,
            "history": history, "read_s": round(read_s, 2), "train_s": round(fit.seconds, 2),
            "executor": ssl.executor, "workers": ssl.workers, "trained_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                          time.gmtime())}
    fsio.put_bytes(fs, weights_path, buf.getvalue())
    fsio.put_json(fs, meta_path, meta)
    log.info("ct_ssl: DINO on %d crops, %d epochs in %.0f s (loss %.4f -> %.4f); weights %s/%s/weights.pt",
             n, dino.epochs, fit.seconds, losses[0] if losses else np.nan, losses[-1] if losses else np.nan,
             MODELS_DIR, key)
    meta["notes"] = [f"self-supervised CT encoder trained now: DINO on {n} studies, {dino.epochs} epochs, "
                     f"{fit.seconds:.0f} s, loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses else ""]
    return weights_uri, meta, crops
