"""Slide ids as the store holds them, from the cohort manifest's ``wsi`` rows.

Light on purpose (no OpenSlide, no torch): the report maps stored slide ids
back to files with the same function the WSI ingest used to name them.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mmray.cohort import manifest_mpp
from mmray.ingest.pseudonym import is_pseudonymised, keyed_label, source_label
from mmray.store.keys import UNDATED


def slide_id(row: dict, patient_key) -> str:
    """The id a slide gets in the store: its ``item_id`` or file stem, or a keyed pseudonym of it.

    With pseudonymisation on, file names and item ids (TCGA barcodes, accession
    numbers, names) never reach the store: the slide is ``<patient pseudonym>-S``
    plus a keyed hash of its raw id, stable across reruns and manifest edits.
    """
    raw = str(row.get("item_id") or "").strip() or Path(str(row["path"]).rstrip("/")).name.split(".")[0]
    if not is_pseudonymised(patient_key):
        return raw
    return keyed_label(patient_key, "slide", f"{row['patient_id']}/{raw}",
                       prefix=f"{patient_key(row['patient_id'])}-S")[:40]


def slide_list(manifest: pd.DataFrame, patient_key) -> tuple[list[dict], list[dict]]:
    """``(slides, failures)`` from the manifest's wsi rows: slide_id, patient_id (keyed), event_time, uri,
    mpp (the manifest's level-0 um/px, or None) and annotation (the GeoJSON tumour annotation's uri, or None).

    ``uri`` is the real file (used to read it, never written); failures name the
    slide by its stored id and its source label (the path only without a pseudonym key).
    """
    rows = manifest[manifest["modality"] == "wsi"]
    slides, failures, seen = [], [], set()
    for r in rows.to_dict("records"):
        uri = r["path"]
        pid = patient_key(r["patient_id"])
        sid = slide_id(r, patient_key)
        item = source_label(patient_key, uri)
        if sid in seen:
            failures.append({"item": item, "patient_id": pid, "reason": f"slide id {sid!r} appears twice in the "
                             f"manifest; give each slide its own item_id", "slide_id": sid})
            continue
        seen.add(sid)
        date = str(r.get("acquisition_date") or "").strip()
        try:
            when = pd.Timestamp(date, tz="UTC") if date else UNDATED
        except ValueError:
            failures.append({"item": item, "patient_id": pid, "slide_id": sid,
                             "reason": f"acquisition_date {date!r} is not a date; use YYYY-MM-DD"})
            continue
        try:
            mpp = manifest_mpp(r.get("mpp"))
        except ValueError as e:
            failures.append({"item": item, "patient_id": pid, "slide_id": sid, "reason": str(e)})
            continue
        note = str(r.get("annotation") or "").strip() or None  # an input path like uri: read, never written
        slides.append({"slide_id": sid, "patient_id": pid, "event_time": when.isoformat(), "uri": uri, "mpp": mpp,
                       "annotation": note})
    return slides, failures
