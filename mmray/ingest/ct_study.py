"""One patient's CT work, as run inside one Ray task: DICOM folder(s) -> one radiomics row.

Discovery -> pick the latest CT+SEG pair -> (skip if the store already has
this exact study with these settings) -> volume -> mask -> pyradiomics ->
optional NIfTI.  Every problem becomes a failure with its reason; nothing
raises out of :func:`run_patient`, so one bad study never stops the others.

Identifiers: the row's ``patient_id`` is the pseudonymised id; study and
series UIDs are stored as keyed hashes (:func:`uid_key`), because DICOM's
de-identification profile (PS3.15 Annex E) treats UIDs as linkable to the
source PACS.  Failure reasons may name a file of the patient's folder and its
SOPInstanceUID (so it can be found and fixed); every text that leaves the task
is scrubbed of the PHI values read from that patient's headers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import logging
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from mmray.errors import InputError
from mmray.features.radiomics import compute_features, pyradiomics_version
from mmray.ingest.ct_volume import Volume, read_volume
from mmray.ingest.dicom_discovery import Instance, StudyPair, local_folder, scan_folder
from mmray.ingest.phi import Redactor
from mmray.ingest.pseudonym import is_pseudonymised, source_label
from mmray.ingest.seg import SegMask, read_seg_mask
from mmray.store.keys import UNDATED

log = logging.getLogger(__name__)
# Library upgrade notices, not problems of the input.
_NOT_INPUT_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning, ImportWarning)


@dataclass(frozen=True)
class StudySettings:
    """What a study task needs besides its inputs (picklable, sent to every task)."""

    params: dict
    params_hash: str
    segment_labels: tuple[str, ...] = ()
    hu_dtype: str = "float32"
    slice_spacing_tolerance_mm: float = 0.1
    seg_position_tolerance_mm: float = 0.1
    write_nifti: bool = False
    scratch_dir: str | None = None
    io_tries: int = 4
    io_base_delay_s: float = 0.5
    sitk_threads: int | None = 1


@dataclass(frozen=True)
class PatientJob:
    patient_id: str  # as in the cohort manifest (never written)
    folders: tuple[str, ...]  # resolved DICOM folder paths / URIs
    reusable: frozenset[str] = field(default_factory=frozenset)  # signatures of rows the store holds


def uid_key(uid: str, patient_key: Callable[[str], str]) -> str:
    """A DICOM UID as stored: sha256 of its pseudonym (keyed when pseudonymisation is on)."""
    return "U" + hashlib.sha256(patient_key(f"dicom-uid:{uid}").encode()).hexdigest()[:24]


def signature(*, study_key: str, ct_key: str, seg_key: str, source_sha256: str, params_hash: str,
              version: str) -> str:
    """What makes a stored row reusable: same study, series, file contents, params and pyradiomics."""
    return f"{study_key}|{ct_key}|{seg_key}|{source_sha256}|{params_hash}|{version}"


def display_item(folders, patient_key: Callable[[str], str]) -> str:
    """The study's folders as named in failures and lineage: paths, or keyed ``SRC-`` labels when pseudonymised."""
    return "; ".join(source_label(patient_key, f) for f in folders)


def _files_sha256(instances: list[Instance]) -> str:
    """One hash of the files' contents (each file's SHA-256, in path order), from the digests discovery took."""
    digest = hashlib.sha256()
    for inst in sorted(instances, key=lambda i: i.path):
        if not inst.sha256:
            with open(inst.path, "rb") as f:
                inst.sha256 = hashlib.sha256(f.read()).digest()
        digest.update(inst.sha256)
    return digest.hexdigest()[:32]


def study_event_time(pair: StudyPair) -> tuple[pd.Timestamp, str | None]:
    """(event time, note): StudyDate at 00:00 UTC, or UNDATED with a note when absent/invalid."""
    raw = pair.study_date.strip()
    try:
        return pd.Timestamp(dt.datetime.strptime(raw, "%Y%m%d"), tz="UTC"), None
    except ValueError:
        return UNDATED, "StudyDate missing or invalid; event_time set to UNDATED (1970-01-01)"


def _quiet_readers() -> None:
    for name in ("pydicom", "highdicom"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_patient(job: PatientJob, settings: StudySettings, *, patient_key: Callable[[str], str],
                store_fs=None, store_root: str | None = None) -> dict:
    """Process one patient into a radiomics row; returns a result dict (status ok / skipped / failed), never raises."""
    return run_study(job, settings, patient_key=patient_key,
                     process=functools.partial(_process, store_fs=store_fs, store_root=store_root))


def run_study(job: PatientJob, settings: StudySettings, *, patient_key: Callable[[str], str],
              process: Callable[..., None]) -> dict:
    """Run ``process(job, settings, result, key=, patient_key=, redactor=)`` on one patient's study, never raising.

    The shared frame of every per-study CT path (radiomics rows, deep-feature crops): ``process`` fills
    ``result`` (``row``, ``status``, ``signature``, ``notes``, ``timings``); an :class:`InputError` or any
    other exception becomes ``result["failure"]`` with its reason, and every text that leaves (reasons,
    notes) is scrubbed of the PHI values and, when pseudonymised, the file and folder names read here.
    """
    start = time.perf_counter()
    key = patient_key(job.patient_id)
    redactor = Redactor(label=(lambda uid: uid_key(uid, patient_key)) if is_pseudonymised(patient_key) else None)
    result: dict = {"patient_id": key, "status": "failed", "row": None, "failure": None, "notes": [],
                    "signature": None, "timings": {}}
    item = display_item(job.folders, patient_key)
    if is_pseudonymised(patient_key):
        for folder in job.folders:
            redactor.add_replacement(folder, source_label(patient_key, folder))
    _quiet_readers()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            process(job, settings, result, key=key, patient_key=patient_key, redactor=redactor)
        reader_warnings = sorted({str(w.message) for w in caught if not issubclass(w.category, _NOT_INPUT_WARNINGS)})
        if reader_warnings:
            result["notes"].append(f"{len(reader_warnings)} DICOM reader warning(s), e.g. {reader_warnings[0]}")
    except InputError as e:
        result["failure"] = {"item": item, "patient_id": key, "reason": str(e), "step": e.stage or "ct"}
    except Exception as e:  # noqa: BLE001  (a bug or an unforeseen input: record it, go on)
        log.warning("CT study of %s failed unexpectedly:\n%s", key, redactor.scrub(traceback.format_exc()))
        result["failure"] = {"item": item, "patient_id": key, "step": "ct",
                             "reason": f"unexpected error ({type(e).__name__}: {e})"}
    if result["failure"]:
        result["status"] = "failed"
        result["failure"]["reason"] = redactor.scrub(result["failure"]["reason"])
    result["notes"] = [redactor.scrub(n) for n in result["notes"]]
    result["timings"]["total_s"] = time.perf_counter() - start
    return result


@dataclass(eq=False)
class OpenedStudy:
    """One patient's chosen CT+SEG study: keys, content hash, and (unless it was reusable) volume and mask."""

    pair: StudyPair
    keys: dict[str, str]  # study_key, ct_series_key, seg_series_key (keyed hashes of the UIDs)
    source_sha256: str
    volume: Volume | None = None
    seg: SegMask | None = None


def open_study(job: PatientJob, settings: StudySettings, result: dict, *, patient_key, redactor: Redactor,
               signature_of: Callable[[dict[str, str], str], str]) -> OpenedStudy:
    """Discover the patient's series, pick the latest CT+SEG pair, hash its files; read volume and mask.

    ``signature_of(keys, source_sha256)`` names what a stored row of this study would be reusable for;
    when ``job.reusable`` holds it, ``result["status"]`` becomes ``skipped`` and no pixels are read
    (the returned study has no volume).  Sets ``result["signature"]``, notes and ``read_s`` / ``seg_s``.
    """
    timings = result["timings"]
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        pairs, notes, unreadable = [], [], []
        for folder in job.folders:
            local = stack.enter_context(local_folder(folder, scratch_dir=settings.scratch_dir,
                                                     tries=settings.io_tries, base_delay_s=settings.io_base_delay_s))
            found = scan_folder(local, redactor=redactor)
            pairs += found.pairs
            notes += found.notes
            unreadable += found.unreadable
        if unreadable:
            raise InputError(f"{len(unreadable)} file(s) look like DICOM but cannot be read, and may be slices of "
                             f"the series: {'; '.join(unreadable[:5])}; repair or remove them", stage="discover")
        if not pairs:
            raise InputError("no CT series with a DICOM SEG that references it" + (f" ({'; '.join(notes)})"
                                                                                   if notes else ""), stage="discover")
        pairs.sort(key=StudyPair.sort_key)
        pair = pairs[-1]
        if len(pairs) > 1:
            notes.append(f"{len(pairs)} CT+SEG pairs; using the latest (study date {pair.study_date or 'unknown'})")
        result["notes"] += notes
        keys = {"study_key": uid_key(pair.study_uid, patient_key),
                "ct_series_key": uid_key(pair.ct.series_uid, patient_key),
                "seg_series_key": uid_key(pair.seg.series_uid, patient_key)}
        study = OpenedStudy(pair=pair, keys=keys, source_sha256=_files_sha256([*pair.ct.instances,
                                                                              pair.seg_instance]))
        result["signature"] = signature_of(keys, study.source_sha256)
        if result["signature"] in job.reusable:
            result["status"] = "skipped"
            timings["read_s"] = time.perf_counter() - t0
            return study
        study.volume = read_volume([(i.name, i.ds) for i in pair.ct.instances], hu_dtype=settings.hu_dtype,
                                   spacing_tolerance_mm=settings.slice_spacing_tolerance_mm)
        timings["read_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        study.seg = read_seg_mask(pair.seg_instance.path, study.volume, name=pair.seg_instance.name,
                                  dataset=pair.seg_instance.ds, labels=settings.segment_labels,
                                  tolerance_mm=settings.seg_position_tolerance_mm,
                                  frame_of_reference_uid=pair.ct.attr("FrameOfReferenceUID") or None)
        timings["seg_s"] = time.perf_counter() - t1
    result["notes"] += list(study.volume.warnings)
    return study


def _process(job: PatientJob, settings: StudySettings, result: dict, *, key: str, patient_key, redactor: Redactor,
             store_fs, store_root) -> None:
    timings = result["timings"]

    def signature_of(keys: dict[str, str], source_sha: str) -> str:
        return signature(study_key=keys["study_key"], ct_key=keys["ct_series_key"], seg_key=keys["seg_series_key"],
                         source_sha256=source_sha, params_hash=settings.params_hash, version=pyradiomics_version())

    study = open_study(job, settings, result, patient_key=patient_key, redactor=redactor, signature_of=signature_of)
    if result["status"] == "skipped":
        return
    pair, keys, volume, seg = study.pair, study.keys, study.volume, study.seg
    source_sha = study.source_sha256
    features, timings["pyradiomics_s"] = compute_features(
        volume.hu, seg.mask, spacing_mm_zyx=volume.spacing_mm_zyx, origin_mm=volume.origin_mm,
        direction=volume.direction, params=settings.params, threads=settings.sitk_threads)
    event_time, note = study_event_time(pair)
    if note:
        result["notes"].append(note)
    paths = {"image": None, "mask": None}
    if settings.write_nifti:
        from mmray.ingest.nifti import write_study_nifti

        t2 = time.perf_counter()
        paths = write_study_nifti(store_fs, store_root, patient_id=key, study_key=keys["study_key"], hu_zyx=volume.hu,
                                  mask_zyx=seg.mask, affine_ras=volume.affine_ras, tries=settings.io_tries,
                                  base_delay_s=settings.io_base_delay_s)
        timings["nifti_s"] = time.perf_counter() - t2
    nz, rows, cols = volume.shape_zyx
    sp_z, sp_y, sp_x = volume.spacing_mm_zyx
    result["row"] = {
        "patient_id": key, "event_time": event_time, **keys, "source_sha256": source_sha,
        "params_hash": settings.params_hash, "pyradiomics_version": pyradiomics_version(),
        "n_slices": nz, "rows": rows, "columns": cols,
        "spacing_z_mm": sp_z, "spacing_y_mm": sp_y, "spacing_x_mm": sp_x,
        "mask_voxels": seg.voxels, "seg_frames": seg.n_frames, "segment_labels": ";".join(seg.segment_labels),
        "volume_warnings": redactor.scrub("; ".join(volume.warnings)),
        "image_nifti_path": paths["image"], "mask_nifti_path": paths["mask"],
        **features,
    }
    result["status"] = "ok"
