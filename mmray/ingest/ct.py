"""CT ingest: each patient's DICOM CT + SEG -> pyradiomics features in the ``radiomics`` group.

One Ray task per patient (:func:`mmray.ingest.ct_study.run_patient`):
discover the series in the patient's folder(s), take the latest CT series
that a SEG references (one row per patient; event_time = its StudyDate, or
UNDATED), build the HU volume and the mask, run pyradiomics, optionally
write NIfTI.  Failed studies go to the report's failures (and so to the
store's failures table); the others finish.

Reruns: a study whose signature (hashed study/series UIDs, sha256 of its
files, params hash, pyradiomics version) matches a row of the latest
``radiomics`` version is not recomputed; its row is carried into the new
version.  When nothing changed, no version is written.  ``force`` recomputes
everything.

``ct:`` section of the ingest YAML (all optional)::

    ct:
      radiomics_params: null           # pyradiomics params YAML (local or s3://); null: mmray's default
      segment_labels: []               # SEG segment labels to use, case-insensitive; []: all segments
      hu_dtype: float32                # float32 | int16 volumes (int16 needs integer rescale)
      slice_spacing_tolerance_mm: 0.1  # uneven slice spacing beyond this fails the study
      seg_position_tolerance_mm: 0.1   # SEG frame <-> CT slice position match
      write_nifti: false               # image/mask .nii.gz under <store>/nifti/<patient>/<study>/
      num_cpus_per_study: 1            # Ray CPUs per study task
      task_resources: {}               # custom Ray resources per study task, e.g. {ingest_cpu: 1}
      io_tries: 4                      # tries for transient storage errors (exponential backoff)
      io_base_delay_s: 0.5
      scratch_dir: null                # local scratch for s3:// DICOM folders (default: system temp)
      deep: {enabled: false, ...}      # deep CT features, modality ct_deep (mmray.ingest.ct_deep_config)
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd

from mmray import uri as uri_mod
from mmray.errors import StoreError
from mmray.features.radiomics import load_params, params_hash, pyradiomics_version
from mmray.ingest.ct_deep_config import CtDeepConfig
from mmray.ingest.ct_study import PatientJob, StudySettings, display_item, run_patient, signature
from mmray.ingest.nifti import NIFTI_DIR
from mmray.ingest.report import ModalityReport
from mmray.progress import RateLog

log = logging.getLogger(__name__)
GROUP = "radiomics"


@dataclass(frozen=True)
class CtConfig:
    radiomics_params: str | None = None
    segment_labels: tuple[str, ...] = ()
    hu_dtype: Literal["float32", "int16"] = "float32"
    slice_spacing_tolerance_mm: float = 0.1
    seg_position_tolerance_mm: float = 0.1
    write_nifti: bool = False
    num_cpus_per_study: float = 1.0
    task_resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources per study task
    io_tries: int = 4
    io_base_delay_s: float = 0.5
    scratch_dir: str | None = None
    deep: CtDeepConfig = field(default_factory=CtDeepConfig)  # ct_deep: crops -> 3D encoder -> ct_embedding

    def validate(self):
        for name in ("slice_spacing_tolerance_mm", "seg_position_tolerance_mm"):
            if getattr(self, name) <= 0:
                yield name, f"must be > 0 mm, got {getattr(self, name)}"
        if self.num_cpus_per_study <= 0:
            yield "num_cpus_per_study", f"must be > 0, got {self.num_cpus_per_study}"
        for name, amount in self.task_resources.items():
            if amount <= 0:
                yield f"task_resources.{name}", f"must be > 0, got {amount}"
        if self.io_tries < 1:
            yield "io_tries", f"must be at least 1, got {self.io_tries}"
        if self.io_base_delay_s < 0:
            yield "io_base_delay_s", f"must be >= 0, got {self.io_base_delay_s}"
        if self.radiomics_params and not uri_mod.is_s3(self.radiomics_params) and not uri_mod.exists(
                self.radiomics_params):
            yield "radiomics_params", (f"file not found: {self.radiomics_params}; give a pyradiomics params "
                                       f"YAML or null for mmray's default")


CONFIG = CtConfig


def settings_for(cfg: CtConfig) -> StudySettings:
    """Validated study settings (loads and checks the pyradiomics params)."""
    params = load_params(cfg.radiomics_params)
    labels = tuple(sorted({label.strip() for label in cfg.segment_labels if label.strip()}, key=str.casefold))
    extra = {"segment_labels": [label.casefold() for label in labels], "hu_dtype": cfg.hu_dtype}
    return StudySettings(
        params=params, params_hash=params_hash(params, extra=extra), segment_labels=labels, hu_dtype=cfg.hu_dtype,
        slice_spacing_tolerance_mm=cfg.slice_spacing_tolerance_mm,
        seg_position_tolerance_mm=cfg.seg_position_tolerance_mm, write_nifti=cfg.write_nifti,
        scratch_dir=cfg.scratch_dir, io_tries=cfg.io_tries, io_base_delay_s=cfg.io_base_delay_s,
        sitk_threads=max(1, int(cfg.num_cpus_per_study)))


def patient_jobs(manifest: pd.DataFrame) -> list[PatientJob]:
    """One job per patient with CT rows, folders in manifest order."""
    folders: OrderedDict[str, list[str]] = OrderedDict()
    for row in manifest[manifest["modality"] == "ct"].itertuples(index=False):
        paths = folders.setdefault(str(row.patient_id), [])
        if row.path not in paths:
            paths.append(str(row.path))
    return [PatientJob(patient_id=pid, folders=tuple(paths)) for pid, paths in folders.items()]


def previous_rows(store, *, force: bool) -> pd.DataFrame | None:
    """The latest radiomics version's rows (None when there is none, or with ``force``)."""
    if force or store.latest(GROUP) is None:
        return None
    try:
        return store.read_table(GROUP)
    except StoreError as e:
        log.warning("cannot read the previous %s version (%s); recomputing every study", GROUP, e)
        return None


def row_signature(row) -> str:
    return signature(study_key=row["study_key"], ct_key=row["ct_series_key"], seg_key=row["seg_series_key"],
                     source_sha256=row["source_sha256"], params_hash=row["params_hash"],
                     version=row["pyradiomics_version"])


def ingest_ct(ctx, *, on_result: Callable[[dict], None] | None = None) -> ModalityReport:
    """Ingest every CT study of ``ctx.cohort`` into the ``radiomics`` group (see the module docs).

    ``on_result`` (optional) gets each study's result dict as it finishes
    (``patient_id``, ``status``, ``timings``: ``read_s``, ``seg_s``,
    ``pyradiomics_s``, ``total_s``); the benchmark uses it.
    """
    cfg: CtConfig = ctx.config
    report = ModalityReport(modality="ct")
    settings = settings_for(cfg)
    jobs = patient_jobs(ctx.cohort.manifest())
    report.n_items = len(jobs)
    if not jobs:
        report.notes.append("the manifest has no ct rows")
        return report
    previous = previous_rows(ctx.store, force=ctx.force)
    by_signature: dict[str, dict] = {}
    if previous is not None and "source_sha256" in previous.columns:
        for row in previous.to_dict("records"):
            if settings.write_nifti and not row.get("image_nifti_path"):
                continue  # NIfTI asked for now but not written then: recompute
            by_signature[row_signature(row)] = row
    reusable: dict[str, set[str]] = {}
    for sig, row in by_signature.items():
        reusable.setdefault(row["patient_id"], set()).add(sig)
    jobs = [PatientJob(patient_id=j.patient_id, folders=j.folders,
                       reusable=frozenset(reusable.get(ctx.patient_key(j.patient_id), ())))
            for j in jobs]
    results = run_tasks(jobs, settings, patient_key=ctx.patient_key, store_uri=ctx.store.uri,
                        num_cpus=cfg.num_cpus_per_study, resources=cfg.task_resources, on_result=on_result)
    rows, sources, notes = [], [], OrderedDict()
    for job, res in zip(jobs, results):
        for note in res["notes"]:
            notes.setdefault(note, []).append(res["patient_id"])
        if res["status"] == "failed":
            report.fail(**res["failure"])
            continue
        row = res["row"] if res["status"] == "ok" else by_signature[res["signature"]]
        report.n_done += res["status"] == "ok"
        report.n_skipped += res["status"] == "skipped"
        rows.append(row)
        sources.append({"uri": display_item(job.folders, ctx.patient_key),
                        "sha256": row["source_sha256"]})
    report.notes += [f"{note} [{len(pids)} patient(s): {', '.join(pids[:3])}{', ...' if len(pids) > 3 else ''}]"
                     for note, pids in notes.items()]
    _write(ctx.store, report, rows=rows, sources=sources, previous=previous, settings=settings)
    return report


def _write(store, report: ModalityReport, *, rows: list[dict], sources: list[dict], previous, settings) -> None:
    params = {"params_hash": settings.params_hash, "pyradiomics_version": pyradiomics_version(),
              "radiomics_params": settings.params, "segment_labels": list(settings.segment_labels),
              "hu_dtype": settings.hu_dtype, "write_nifti": settings.write_nifti,
              "nifti_dir": NIFTI_DIR if settings.write_nifti else None,
              "uids": "study/series UIDs stored as sha256 of their pseudonym (study_key, *_series_key)",
              "event_time": "StudyDate of the latest CT+SEG study per patient (UNDATED when absent)"}
    write_patient_rows(store, report, group=GROUP, rows=rows, sources=sources, previous=previous, params=params)


def write_patient_rows(store, report: ModalityReport, *, group: str, rows: list[dict], sources: list[dict],
                       previous, params: dict) -> None:
    """One row per patient into a new version of ``group`` (radiomics, ct_embedding), unless no study succeeded
    or nothing changed since ``previous`` (the latest version's table); notes in ``report`` say which."""
    if not rows:
        report.notes.append(f"no CT study succeeded; no {group} version written")
        return
    unchanged = (report.n_done == 0 and previous is not None
                 and sorted(previous["patient_id"]) == sorted(r["patient_id"] for r in rows))
    if unchanged:
        report.notes.append(f"{group}@{store.latest(group)} is up to date ({report.n_skipped} studies); "
                            f"no new version written")
        return
    params = params | {"computed": report.n_done, "reused": report.n_skipped}
    report.groups[group] = store.write_table(group, pd.DataFrame(rows), sources=sources, params=params)


def run_tasks(jobs: list[PatientJob], settings: StudySettings, *, patient_key, store_uri: str,
              num_cpus: float = 1.0, resources: dict[str, float] | None = None,
              on_result: Callable[[dict], None] | None = None) -> list[dict]:
    """Run one Ray task per patient; results in job order, logged as they finish.

    ``resources``: custom Ray resources each task asks for (e.g. ``{"ingest_cpu": 1}``), so the
    tasks land on the node type that offers them.
    """
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    task = ray.remote(num_cpus=num_cpus, resources=resources or None, max_retries=1)(_study_task)
    refs = [task.remote(job, settings, patient_key, store_uri) for job in jobs]
    index = {ref: i for i, ref in enumerate(refs)}
    results: list[dict | None] = [None] * len(jobs)
    pending, start, n = list(refs), time.perf_counter(), len(jobs)
    progress = RateLog(log, "ct", n, unit="studies")
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            i = index[ref]
            try:
                res = ray.get(ref)
            except Exception as e:  # noqa: BLE001  (the worker died: OOM kill, segfault in a C extension)
                key = patient_key(jobs[i].patient_id)
                res = {"patient_id": key, "status": "failed", "row": None, "notes": [], "signature": None,
                       "timings": {}, "failure": {"item": display_item(jobs[i].folders, patient_key),
                                                  "patient_id": key, "step": "ct",
                                                  "reason": f"the study's Ray task died ({type(e).__name__})"}}
            results[i] = res
            if on_result is not None:
                on_result(res)
            if res["status"] == "failed":
                log.warning("ct %s FAILED: %s", res["patient_id"], res["failure"]["reason"][:200])
            log.debug("ct %d/%d %s %s (%.1f s; %.1f s elapsed)", n - len(pending), n, res["patient_id"],
                      res["status"], res["timings"].get("total_s", 0.0), time.perf_counter() - start)
            progress.tick(failed=res["status"] == "failed")
    return results


def _study_task(job: PatientJob, settings: StudySettings, patient_key, store_uri: str) -> dict:
    fs, root = uri_mod.filesystem(store_uri) if settings.write_nifti else (None, None)
    return run_patient(job, settings, patient_key=patient_key, store_fs=fs, store_root=root)
