"""Sample identifiers -> patients (TCGA barcodes), one sample per patient.

A TCGA barcode names project, tissue source site and participant in its first
12 characters (``TCGA-05-4244``: the patient), then the sample type and vial
(``-01A``), portion, analyte, plate and centre
(``TCGA-05-4244-01A-01R-1107-07``).  Sample type codes: 01-09 tumour (01 primary
solid tumour), 10-19 normal, 20-29 control.

Any other identifier is taken as the patient id itself (it must equal the
clinical ``id_column`` value to join).

When a patient has several samples, one is kept, deterministically: tumour
before normal before control, then the lowest sample type code (01 primary
before 02 recurrent ...), then the vial letter, then the full barcode in text
order.  Every sample left out is reported in :attr:`SampleAssignment.dropped`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

# Patient (12 characters), then optional sample type (2 digits) + vial, then anything.
TCGA_BARCODE = re.compile(
    r"^(?P<patient>TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})"
    r"(?:-(?P<sample>\d{2})(?P<vial>[A-Z])?(?:-[A-Z0-9-]+)?)?$", re.IGNORECASE)
KIND_ORDER = {"tumour": 0, "normal": 1, "control": 2, "unknown": 3}


@dataclass(frozen=True)
class SampleId:
    raw: str
    patient: str
    sample_type: int | None  # TCGA sample type code, None when the id carries none
    vial: str
    kind: str  # tumour | normal | control | unknown

    @property
    def rank(self) -> tuple:
        return (KIND_ORDER[self.kind], 99 if self.sample_type is None else self.sample_type,
                self.vial, self.raw)


def is_barcode(sample_id: str) -> bool:
    return bool(TCGA_BARCODE.match(str(sample_id).strip()))


def parse_sample(sample_id: str) -> SampleId:
    """Parse one sample id; non-TCGA ids map to themselves (kind ``unknown``)."""
    raw = str(sample_id).strip()
    m = TCGA_BARCODE.match(raw)
    if not m:
        return SampleId(raw=raw, patient=raw, sample_type=None, vial="", kind="unknown")
    code = int(m["sample"]) if m["sample"] else None
    if code is None:
        kind = "unknown"
    elif code < 10:
        kind = "tumour"
    elif code < 20:
        kind = "normal"
    else:
        kind = "control"
    return SampleId(raw=raw, patient=m["patient"].upper(), sample_type=code, vial=(m["vial"] or "").upper(),
                    kind=kind)


@dataclass
class SampleAssignment:
    """Which sample stands for each patient, and which were left out (and why)."""

    chosen: dict[str, str] = field(default_factory=dict)  # sample id -> patient id
    dropped: list[dict] = field(default_factory=list)  # {sample, patient, kept, reason}

    def notes(self, what: str) -> list[str]:
        if not self.dropped:
            return []
        dup = [d for d in self.dropped if d["kept"]]
        lines = []
        if dup:
            examples = "; ".join(f"kept {d['kept']} over {d['sample']}" for d in dup[:3])
            lines.append(f"{what}: {len(dup)} extra sample(s) of patients with several samples left out "
                         f"(tumour before normal, lowest sample type, vial, barcode): {examples}"
                         + (" ..." if len(dup) > 3 else ""))
        other = [d for d in self.dropped if not d["kept"]]
        if other:
            lines.append(f"{what}: {len(other)} sample(s) left out: "
                         + "; ".join(f"{d['sample']} ({d['reason']})" for d in other[:3])
                         + (" ..." if len(other) > 3 else ""))
        return lines


def assign_samples(sample_ids: Iterable[str], *, tumour_only: bool = False) -> SampleAssignment:
    """Map sample ids to patients, keeping one sample per patient (see module docstring).

    ``tumour_only``: leave out normal and control samples even when a patient
    has no tumour sample (their features would describe normal tissue).
    """
    by_patient: dict[str, list[SampleId]] = {}
    out = SampleAssignment()
    seen: set[str] = set()
    for sid in sample_ids:
        parsed = parse_sample(sid)
        if parsed.raw in seen:
            continue
        seen.add(parsed.raw)
        if tumour_only and parsed.kind in ("normal", "control"):
            out.dropped.append({"sample": parsed.raw, "patient": parsed.patient, "kept": None,
                                "reason": f"{parsed.kind} sample (tables.samples.tumour_only is set)"})
            continue
        by_patient.setdefault(parsed.patient, []).append(parsed)
    for patient, samples in by_patient.items():
        samples.sort(key=lambda s: s.rank)
        out.chosen[samples[0].raw] = patient
        for extra in samples[1:]:
            out.dropped.append({"sample": extra.raw, "patient": patient, "kept": samples[0].raw,
                                "reason": f"patient has another sample ({samples[0].raw}) preferred"})
    return out
