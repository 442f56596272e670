"""Helpers shared by the table ingesters: ids, pseudonym hygiene, resume, writing."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from mmray import uri
from mmray.errors import CohortError, StoreError
from mmray.features.barcodes import parse_sample
from mmray.features.table_io import read_any_table
from mmray.ingest.pseudonym import identity, is_pseudonymised, source_label
from mmray.ingest.report import ModalityReport
from mmray.store.keys import UNDATED

log = logging.getLogger("mmray.ingest.tables")
_KEY_PROBE = "\x00mmray-pseudonym-key-check"


def key_fingerprint(patient_key) -> str:
    """What ids the store holds: ``identity`` or a keyed pseudonym of a constant.

    The pseudonym of a fixed string tells two keys apart (so a rerun with
    another key recomputes everything) and reveals nothing about the key.
    """
    probe = patient_key(_KEY_PROBE)
    return "identity" if probe == _KEY_PROBE else f"pseudonym:{probe}"


def clinical_ids(cohort) -> set[str]:
    """Raw patient ids of the clinical table (empty when there is none or it cannot be read)."""
    ref = cohort.spec.clinical
    if ref is None:
        return set()
    try:
        table = read_any_table(cohort.part_path("clinical"), what="clinical", fmt=ref.format)
    except CohortError:
        return set()
    if ref.id_column not in table.frame.columns:
        return set()
    return {str(v).strip() for v in table.frame[ref.id_column] if str(v).strip()}


def _id_pattern(ids: list[str]):
    """Regex finding any of ``ids`` where no letter or digit touches it (TCGA-05-4244 inside
    TCGA-05-4244-01A, not 1 inside 12); None for no ids."""
    if not ids:
        return None
    return re.compile(r"(?<![A-Za-z0-9])(?:" + "|".join(re.escape(i) for i in ids) + r")(?![A-Za-z0-9])")


class Scrubber:
    """Replaces raw patient ids by their pseudonyms in failure records and notes.

    Failures go to the store; with pseudonymisation on, no raw id may land
    there, not even inside a sample barcode (``TCGA-05-4244-01A`` becomes
    ``PSN-...-01A``).  A no-op without a key.
    """

    def __init__(self, patient_key, raw_ids):
        self.key = patient_key
        ids = sorted({str(i) for i in raw_ids if str(i)}, key=len, reverse=True)
        self.active = key_fingerprint(patient_key) != "identity" and bool(ids)
        self.pattern = _id_pattern(ids) if self.active else None
        self.word_ids = _id_pattern([i for i in ids if not i.isdigit()])
        self.cache: dict[str, str] = {}

    def contains_ids(self, values) -> bool:
        """Whether any cell of ``values`` holds a raw id (sample barcodes, a second id column, a note).

        Ids made of digits only are left out of this test: they cannot be told
        from numbers (an id 3 and a stage 3).
        """
        return self.word_ids is not None and any(self.word_ids.search(str(v)) for v in values)

    def text(self, value):
        if not self.active or not isinstance(value, str):
            return value
        return self.pattern.sub(lambda m: self._pk(m.group(0)), value)

    def _pk(self, raw: str) -> str:
        canon = parse_sample(raw).patient
        if canon not in self.cache:
            self.cache[canon] = self.key(canon)
        return self.cache[canon]



def keyed_patient(failure: dict, patient_key) -> dict:
    """A failure with ``patient_id`` (a raw id, or taken from its ``sample``) replaced by its key."""
    raw = failure.get("patient_id")
    if raw is None and failure.get("sample"):
        raw = parse_sample(failure["sample"]).patient
    return {**failure, "patient_id": None if raw is None else patient_key(str(raw))}


def _normal(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def _digest(source: dict) -> str | None:
    return source.get("sha256") or source.get("etag")


def up_to_date(store, group: str, *, sources: list[str], params: dict, patient_key=None) -> bool:
    """The group's latest version came from these files, unchanged, with these parameters.

    ``params``: the settings that decide the output (the manifest may hold
    more: what the ingest found, e.g. the subtype mapping).
    The manifest must list exactly the files of ``sources`` (folders expanded),
    each with its checksum; files are matched by their source label (the path,
    or its keyed ``SRC-`` label when pseudonymised: see :func:`described_sources`).
    """
    try:
        man = store.manifest(group)
    except StoreError:
        return False
    stored, wanted = man.get("params") or {}, json.loads(_normal(params))
    if any(_normal(stored.get(k)) != _normal(v) for k, v in wanted.items()):  # what was computed may add keys
        return False
    recorded = {c["uri"]: _digest(c) for c in man.get("sources") or []}
    try:
        declared = {source_label(patient_key or identity, f): f for f in _files(sources)}
        if set(declared) != set(recorded):
            return False
        return all(_digest(uri.checksum(f)) == recorded[label] for label, f in declared.items())
    except OSError:
        return False


def _files(sources) -> list[str]:
    return [f if uri.is_s3(f) else str(Path(f).resolve()) for src in sources for f in uri.list_files(src)]


def described_sources(sources, patient_key) -> list[dict]:
    """Lineage of input files: checksum and size, named by :func:`~mmray.ingest.pseudonym.source_label`
    (with a pseudonym key no path reaches the store)."""
    return [{**uri.checksum(f), "uri": source_label(patient_key, f)} for f in _files(sources)]


def feature_frame(values: pd.DataFrame, *, patient_key, event_times=None, dtype=None) -> pd.DataFrame:
    """Patients x features (index raw patient ids) -> store rows with keyed ids and event times."""
    cols = {"patient_id": [patient_key(str(p)) for p in values.index],
            "event_time": (list(event_times) if event_times is not None else [UNDATED] * len(values))}
    data = values.to_numpy(dtype=dtype)
    body = pd.DataFrame(data, columns=[str(c) for c in values.columns], index=range(len(values)))
    clash = [c for c in ("patient_id", "event_time") if c in body.columns]
    if clash:
        body = body.rename(columns={c: f"{c}_feature" for c in clash})
    return pd.concat([pd.DataFrame(cols), body], axis=1)


def write_group(ctx, report: ModalityReport, group: str, frame: pd.DataFrame, *, sources, params: dict) -> None:
    if frame.empty:
        report.notes.append(f"nothing to write for group {group!r} (no rows)")
        return
    version = ctx.store.write_table(group, frame, sources=described_sources(sources, ctx.patient_key), params=params)
    report.groups[group] = version
    log.info("%s: wrote %s@%s (%d rows x %d columns)", report.modality, group, version, len(frame),
             frame.shape[1] - 2)


def finish(report: ModalityReport, scrub: Scrubber, failures: list[dict], notes: list[str],
           patient_key, *, files=()) -> ModalityReport:
    """Failures with keyed patient ids and no raw id left in any text; notes likewise.

    ``files``: the inputs read; with pseudonymisation, their paths and names become source labels
    (``SRC-... line 22``), as in the group's lineage.
    """
    names = _file_labels(files, patient_key)

    def clean(value):
        value = scrub.text(value)
        if isinstance(value, str):
            for raw, label in names:
                value = value.replace(raw, label)
        return value

    report.failures = [{k: clean(v) for k, v in keyed_patient(f, patient_key).items()} for f in failures]
    report.notes += [clean(n) for n in notes]
    return report


def _file_labels(files, patient_key) -> list[tuple[str, str]]:
    """``(path or file name, label)``, longest first; empty without pseudonymisation."""
    if not is_pseudonymised(patient_key):
        return []
    pairs = {}
    for f in files:
        label = source_label(patient_key, f)
        pairs[str(f)] = label
        pairs.setdefault(Path(str(f)).name, label)
    return sorted(pairs.items(), key=lambda p: -len(p[0]))


def non_empty(mask) -> bool:
    return bool(np.asarray(mask).any())
