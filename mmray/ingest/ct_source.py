"""A Ray Data source over a cohort's CT studies: one row per patient's study, a tumour-centred crop and its mask.

::

    ray.data.read_datasource(CtStudyDatasource(jobs, settings=..., spec=..., patient_key=..., deep_hash=...))
      -> rows: patient_id, event_time, study/series keys, source_sha256, signature, status, error, ...,
               image (n, n, n) float32 in [0, 1], mask (n, n, n) uint8      (n = spec.n_vox)

Each read task handles one study with the radiomics path's own code
(:func:`mmray.ingest.ct_study.open_study`: discovery, the latest CT+SEG pair,
the volume, the SEG mask aligned by position) and crops it
(:func:`mmray.features.ct_crop.tumour_crop`); the volume is dropped as soon
as the crop is cut, so a task holds one study and the pipeline never holds
the cohort.  Ray Data's streaming executor runs as many read tasks as the
CPUs (and ``ct.deep.read``) allow and feeds the encoder actors as crops land.

A study that fails (unreadable files, truncated series, no SEG, SEG off the
grid, empty mask) becomes a row with ``status == "failed"`` and its scrubbed
reason in ``error``; a study whose ``signature`` the store already holds
becomes a ``skipped`` row without pixels.  Both carry all-zero crops of the
same shape, so every block has one schema; the encoder leaves them out.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

import numpy as np
from ray.data import Datasource

from mmray.features.ct_crop import CropSpec, tumour_crop
from mmray.ingest.ct_study import PatientJob, StudySettings, display_item, open_study, run_study, study_event_time

log = logging.getLogger(__name__)
TEXT_COLUMNS = ("patient_id", "event_time", "study_key", "ct_series_key", "seg_series_key", "source_sha256",
                "signature", "status", "error", "step", "item", "notes")
NUMBER_COLUMNS = ("n_slices", "mask_voxels", "crop_mask_voxels", "spacing_z_mm", "spacing_y_mm", "spacing_x_mm",
                  "read_s", "seg_s", "crop_s", "total_s")


def deep_signature(keys: dict[str, str], source_sha256: str, deep_hash: str) -> str:
    """What makes a stored ct_embedding row reusable: same study, series, file contents, crop and encoder."""
    return f"{keys['study_key']}|{keys['ct_series_key']}|{keys['seg_series_key']}|{source_sha256}|{deep_hash}"


def deep_hash(*, spec: CropSpec, settings: StudySettings, encoder_id: str) -> str:
    """Hash of every setting an embedding depends on besides the study (crop, mask labels, HU dtype, encoder)."""
    text = "|".join([spec.digest(), ";".join(label.casefold() for label in settings.segment_labels),
                     settings.hu_dtype, encoder_id])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _crop_process(job: PatientJob, settings: StudySettings, result: dict, *, key: str, patient_key, redactor,
                  spec: CropSpec, deep_hash_: str) -> None:
    study = open_study(job, settings, result, patient_key=patient_key, redactor=redactor,
                       signature_of=lambda keys, sha: deep_signature(keys, sha, deep_hash_))
    event_time, note = study_event_time(study.pair)
    if note:
        result["notes"].append(note)
    row = {"patient_id": key, "event_time": event_time.isoformat(), **study.keys,
           "source_sha256": study.source_sha256}
    if result["status"] == "skipped":
        result["row"] = row
        return
    t0 = time.perf_counter()
    volume, seg = study.volume, study.seg
    image, mask = tumour_crop(volume.hu, seg.mask, spacing_mm_zyx=volume.spacing_mm_zyx, spec=spec)
    result["timings"]["crop_s"] = time.perf_counter() - t0
    sp_z, sp_y, sp_x = volume.spacing_mm_zyx
    row.update(n_slices=volume.shape_zyx[0], mask_voxels=seg.voxels, crop_mask_voxels=int(mask.sum()),
               spacing_z_mm=sp_z, spacing_y_mm=sp_y, spacing_x_mm=sp_x, image=image, mask=mask)
    result["row"] = row
    result["status"] = "ok"


def study_crop(job: PatientJob, *, settings: StudySettings, spec: CropSpec, patient_key: Callable[[str], str],
               deep_hash_: str) -> dict:
    """One study -> one row (a dict of scalars plus ``image`` / ``mask``); never raises (see the module docs)."""
    import functools

    res = run_study(job, settings, patient_key=patient_key,
                    process=functools.partial(_crop_process, spec=spec, deep_hash_=deep_hash_))
    row = dict(res["row"] or {})
    n = spec.n_vox
    out = {c: "" for c in TEXT_COLUMNS}
    out.update({c: np.nan for c in NUMBER_COLUMNS})
    out.update({k: v for k, v in row.items() if k not in ("image", "mask")})
    out.update(patient_id=res["patient_id"], status=res["status"], signature=res["signature"] or "",
               item=display_item(job.folders, patient_key), notes="\n".join(res["notes"]),
               **{k: res["timings"].get(k, np.nan) for k in ("read_s", "seg_s", "crop_s", "total_s")})
    if res["failure"]:
        out.update(error=res["failure"]["reason"], step=res["failure"]["step"], item=res["failure"]["item"])
    out["image"] = row.get("image", np.zeros((n, n, n), np.float32))
    out["mask"] = row.get("mask", np.zeros((n, n, n), np.uint8))
    return out


def rows_to_block(rows: list[dict]):
    """Rows of :func:`study_crop` -> one Arrow block (tensor columns for image and mask)."""
    from ray.data.block import BlockAccessor

    batch = {c: np.array([str(r[c] or "") for r in rows], dtype=object) for c in TEXT_COLUMNS}
    batch.update({c: np.array([float(r[c]) for r in rows], dtype=np.float64) for c in NUMBER_COLUMNS})
    batch["image"] = np.stack([r["image"] for r in rows]).astype(np.float32, copy=False)
    batch["mask"] = np.stack([r["mask"] for r in rows]).astype(np.uint8, copy=False)
    return BlockAccessor.batch_to_block(batch)


class CtStudyDatasource(Datasource):
    """Ray Data ``Datasource``: one read task, one block, one row per patient's CT study (see the module docs).

    ``jobs``: one :class:`PatientJob` per patient (folders resolved; ``reusable`` holds the deep signatures
    the store already has); ``patient_key``: the run's pseudonymiser (picklable).
    """

    def __init__(self, jobs: list[PatientJob], *, settings: StudySettings, spec: CropSpec,
                 patient_key: Callable[[str], str], deep_hash_: str):
        self.jobs, self.settings, self.spec = list(jobs), settings, spec
        self.patient_key, self.deep_hash = patient_key, deep_hash_

    def get_name(self) -> str:
        return "CtStudies"

    def estimate_inmemory_data_size(self) -> int:
        return len(self.jobs) * self.spec.n_vox ** 3 * 5

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None):
        from ray.data import ReadTask
        from ray.data.block import BlockMetadata

        size = self.spec.n_vox ** 3 * 5
        settings, spec, patient_key, digest = self.settings, self.spec, self.patient_key, self.deep_hash
        tasks = []
        for job in self.jobs:  # one task per study: a slow or huge study never holds others back
            def read(job=job):  # binds this study only, so each task ships one job, not the cohort's list
                yield rows_to_block([study_crop(job, settings=settings, spec=spec, patient_key=patient_key,
                                                deep_hash_=digest)])
            tasks.append(ReadTask(read, BlockMetadata(num_rows=1, size_bytes=size, exec_stats=None,
                                                      input_files=None)))
        return tasks


def crop_dataset(jobs: list[PatientJob], *, settings: StudySettings, spec: CropSpec,
                 patient_key: Callable[[str], str], deep_hash_: str, num_cpus: float = 1.0,
                 memory_mb: int | None = None, concurrency: int | None = None,
                 resources: dict[str, float] | None = None):
    """The lazy ``ray.data.Dataset`` of :class:`CtStudyDatasource` (one block per study).

    ``num_cpus`` / ``memory_mb`` / ``resources``: what each read task asks Ray for (a study's volume, mask
    and SEG frames live in it); ``concurrency``: read tasks at once (default: as many as fit).
    """
    import ray.data

    source = CtStudyDatasource(jobs, settings=settings, spec=spec, patient_key=patient_key, deep_hash_=deep_hash_)
    return ray.data.read_datasource(source, override_num_blocks=max(1, len(jobs)), num_cpus=num_cpus,
                                    memory=memory_mb * 2**20 if memory_mb else None, concurrency=concurrency,
                                    resources=resources or None)
