"""CT ingest, deep path: each patient's CT + SEG -> a tumour-centred crop -> a 3D encoder -> ``ct_embedding``.

::

    CtStudyDatasource (Ray Data read tasks, one per study: discovery, volume, SEG mask, crop)
      -> map_batches(CtEncoder, ActorPoolStrategy)   3D ResNet, GPU (bf16) when the cluster has one
      -> driver: one row per patient (emb_000 ... emb_<dim-1>, keys, encoder identity) -> store

Modality ``ct_deep`` (``mmray ingest --modalities ct_deep``, or every modality
with ``ct.deep.enabled: true``), configured by the ``ct`` section's ``deep``
part (:mod:`mmray.ingest.ct_deep_config`); the study reading settings are the
radiomics path's.  One row per patient (the latest CT+SEG study; event_time =
its StudyDate), the same patients and keys as ``radiomics``.

Encoder weights: ``ct.deep.encoder.weights`` (a local or ``s3://`` file; identity
``<arch>@sha256:<hex>``), else self-supervised weights trained on this cohort's
crops when ``ct.deep.ssl.enabled`` (:mod:`mmray.train.ct_ssl`; kept in the store
and reused by later runs), else a seeded random initialisation with a loud warning.

Failures: a study that cannot be read, cropped or embedded is a failure with
its reason (scrubbed of PHI; pseudonymised ids and file labels), the others
finish.  Reruns: a study whose signature (hashed study/series UIDs, sha256 of
its files, crop settings, mask labels, encoder identity) matches a row of the
latest ``ct_embedding`` version is not read again; its row is carried into the
new version.  When nothing changed no version is written; ``force`` recomputes.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict

import numpy as np
import pandas as pd

from mmray.errors import StoreError
from mmray.features.ct_encoder import embedding_dataset, embedding_dim, resolve
from mmray.features.tile_pipeline import pipeline_context
from mmray.ingest.ct import CONFIG as CT_CONFIG
from mmray.ingest.ct import CtConfig, patient_jobs, settings_for, write_patient_rows
from mmray.ingest.ct_source import crop_dataset, deep_hash, deep_signature
from mmray.ingest.ct_study import PatientJob
from mmray.ingest.report import ModalityReport
from mmray.progress import RateLog

log = logging.getLogger(__name__)
GROUP = "ct_embedding"
CONFIG = CT_CONFIG  # the ct section: shared study settings plus `deep`
META = ("patient_id", "event_time", "study_key", "ct_series_key", "seg_series_key", "source_sha256", "signature",
        "encoder_id", "crop_mask_voxels")


def embedding_columns(dim: int) -> list[str]:
    return [f"emb_{i:03d}" for i in range(dim)]


def previous_rows(store, *, force: bool) -> pd.DataFrame | None:
    """The latest ct_embedding version's rows (None when there is none, or with ``force``)."""
    if force or store.latest(GROUP) is None:
        return None
    try:
        return store.read_table(GROUP)
    except StoreError as e:
        log.warning("cannot read the previous %s version (%s); recomputing every study", GROUP, e)
        return None


def _row(rec: dict, emb: np.ndarray, columns: list[str], digest: str) -> dict:
    row = {k: rec[k] for k in META if k not in ("event_time", "crop_mask_voxels", "signature")}
    row["signature"] = deep_signature(rec, rec["source_sha256"], digest)  # crops read for SSL carry none
    row["event_time"] = pd.Timestamp(rec["event_time"])
    row["crop_mask_voxels"] = int(rec["crop_mask_voxels"])
    row.update(zip(columns, (float(v) for v in emb)))
    return row


def read_concurrency(deep) -> int | None:
    """Read tasks at once: ``ct.deep.read.concurrency``, else the CPUs the encoder actors leave free.

    Without a cap, on a small CPU-only cluster the reads take every CPU and the encoder actor waits for
    the last of them, so nothing streams.  With custom read resources or GPU encoders the cap is Ray's.
    """
    import ray

    if deep.read.concurrency or deep.read_resources:
        return deep.read.concurrency
    from mmray.features.tile_pipeline import pool_size, use_gpu

    gpu = use_gpu(deep.encoder, section="ct.deep.encoder")
    actors_cpu = 0.0 if gpu else pool_size(deep.encoder, gpu=False) * deep.encoder.num_cpus_per_actor
    free = ray.cluster_resources().get("CPU", 1) - actors_cpu
    return max(1, int(free / deep.read.num_cpus))


def ingest_ct_deep(ctx) -> ModalityReport:
    """Ingest every CT study of ``ctx.cohort`` into the ``ct_embedding`` group (see the module docs)."""
    cfg: CtConfig = ctx.config
    deep = cfg.deep
    report = ModalityReport(modality="ct_deep")
    jobs = patient_jobs(ctx.cohort.manifest())
    report.n_items = len(jobs)
    if not jobs:
        report.notes.append("the manifest has no ct rows")
        return report
    settings = settings_for(cfg)
    weights, ssl_info, ready = deep.encoder.weights, None, None
    if weights is None and deep.ssl.enabled:
        from mmray.train.pretrain.ct_ssl import ssl_weights

        weights, ssl_info, ready = ssl_weights(ctx, jobs=jobs, settings=settings)
        report.notes += [n for n in ssl_info.pop("notes", []) if n]
    spec = resolve(deep.encoder, weights=weights)
    report.notes += list(spec.notes)
    digest = deep_hash(spec=deep.crop, settings=settings, encoder_id=spec.encoder_id)
    previous = previous_rows(ctx.store, force=ctx.force)
    by_signature = {} if previous is None else {r["signature"]: r for r in previous.to_dict("records")}
    reusable: dict[str, set[str]] = {}
    for sig, row in by_signature.items():
        reusable.setdefault(row["patient_id"], set()).add(sig)
    jobs = [PatientJob(patient_id=j.patient_id, folders=j.folders,
                       reusable=frozenset(reusable.get(ctx.patient_key(j.patient_id), ()))) for j in jobs]
    columns = embedding_columns(embedding_dim(spec))
    rows, sources, notes = [], [], OrderedDict()
    progress = RateLog(log, "ct_deep", len(jobs), unit="studies")
    start = time.perf_counter()
    with pipeline_context(object_store_limit_mb=deep.object_store_limit_mb):
        # After training the encoder now, its crops are already in the object store: encode those.
        crops = ready if ready is not None else crop_dataset(
            jobs, settings=settings, spec=deep.crop, patient_key=ctx.patient_key, deep_hash_=digest,
            num_cpus=deep.read.num_cpus, memory_mb=deep.read.memory_mb, concurrency=read_concurrency(deep),
            resources=deep.read_resources)
        ds = embedding_dataset(crops, spec=spec, cfg=deep.encoder, resources=deep.encoder_resources)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for i in range(len(batch["patient_id"])):
                rec = {k: batch[k][i] for k in batch if k != "embedding"}
                for note in filter(None, str(rec["notes"]).split("\n")):
                    notes.setdefault(note, []).append(rec["patient_id"])
                status = rec["status"]
                progress.tick(failed=status == "failed")
                if status == "failed":
                    report.fail(item=rec["item"], patient_id=rec["patient_id"], reason=rec["error"], step=rec["step"])
                    log.warning("ct_deep %s FAILED: %s", rec["patient_id"], str(rec["error"])[:200])
                    continue
                row = (_row(rec, batch["embedding"][i], columns, digest) if status == "ok"
                       else by_signature[rec["signature"]])
                report.n_done += status == "ok"
                report.n_skipped += status == "skipped"
                rows.append(row)
                sources.append({"uri": rec["item"], "sha256": row["source_sha256"]})
    log.debug("ct_deep: %d studies in %.1f s", len(jobs), time.perf_counter() - start)
    report.notes += [f"{note} [{len(pids)} patient(s): {', '.join(pids[:3])}{', ...' if len(pids) > 3 else ''}]"
                     for note, pids in notes.items()]
    params = {"encoder_id": spec.encoder_id, "encoder": dataclasses.asdict(deep.encoder) | {"weights": None},
              "embedding_dim": len(columns), "crop": dataclasses.asdict(deep.crop), "crop_digest": deep.crop.digest(),
              "deep_hash": digest, "segment_labels": list(settings.segment_labels), "hu_dtype": settings.hu_dtype,
              "ssl": ssl_info and {k: v for k, v in ssl_info.items() if k != "notes"},
              "uids": "study/series UIDs stored as sha256 of their pseudonym (study_key, *_series_key)",
              "event_time": "StudyDate of the latest CT+SEG study per patient (UNDATED when absent)"}
    write_patient_rows(ctx.store, report, group=GROUP, rows=rows, sources=sources, previous=previous, params=params)
    return report
