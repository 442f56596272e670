"""Keep DICOM header PHI out of everything mmray writes.

mmray reads patient-identifying headers (names, birth dates, addresses, MRNs,
institutions, accession numbers) only because they sit in the same files as
the geometry it needs; it never copies them into rows, NIfTI headers, failure
reasons or log lines.  As a second line of defence, a :class:`Redactor`
collects the PHI values of every header read for a study and scrubs them from
any text that leaves the study's worker (third-party error messages and
warnings sometimes quote header values).
"""

from __future__ import annotations

import re

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

# Attributes whose values identify a person or a care episode (after DICOM PS3.15
# Annex E, the ones hospital exports carry in practice).
PHI_KEYWORDS = (
    "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthName",
    "PatientMotherBirthName", "PatientBirthDate", "PatientBirthTime", "PatientAddress",
    "PatientTelephoneNumbers", "MedicalRecordLocator", "IssuerOfPatientID", "MilitaryRank",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName",
    "ReferringPhysicianName", "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
    "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord",
    "RequestingPhysician", "OperatorsName", "AccessionNumber", "StudyID", "RequestedProcedureID",
    "PatientComments", "AdditionalPatientHistory", "ClinicalTrialSiteName",
)
_PHI_TAGS = frozenset(tag_for_keyword(k) for k in PHI_KEYWORDS)
_MAX_DEPTH = 3
_GEOMETRY_SEQUENCES = frozenset({tag_for_keyword("PerFrameFunctionalGroupsSequence")})
REDACTED = "[redacted]"
_MIN_LEN = 3  # shorter values ("M", "F", "01") would scrub ordinary text


class Redactor:
    """Collects PHI values from DICOM headers; :meth:`scrub` removes them from text."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._pattern: re.Pattern | None = None

    def add_dataset(self, ds: Dataset, *, nested: bool = True, depth: int = 0) -> None:
        """Collect PHI values of ``ds``; with ``nested``, of its sequence items too (enhanced
        images copy patient attributes into converted-attribute sequences)."""
        for tag in _PHI_TAGS.intersection(ds.keys()):
            value = ds[tag].value
            if value is None or value == "":
                continue
            for v in value if isinstance(value, (list, tuple)) or _is_multi(value) else [value]:
                self.add_value(v)
        if not nested or depth >= _MAX_DEPTH:
            return
        for tag in list(ds.keys()):
            if tag in _GEOMETRY_SEQUENCES:
                continue  # per-frame positions of multi-frame images: thousands of items, no PHI
            if ds.get_item(tag, keep_deferred=True).VR == "SQ":  # keep_deferred: never reads pixel data
                for item in ds[tag].value:
                    self.add_dataset(item, depth=depth + 1)

    def add_value(self, value) -> None:
        text = str(value).strip()
        if len(text) < _MIN_LEN:
            return
        new = {text}
        if isinstance(value, PersonName) or "^" in text:
            new |= {part.strip() for part in re.split(r"[\^=]", text)}
        new = {v for v in new if len(v) >= _MIN_LEN} - self._values
        if new:
            self._values |= new
            self._pattern = None

    @property
    def values(self) -> frozenset[str]:
        return frozenset(self._values)

    def scrub(self, text: str) -> str:
        """``text`` with every collected value (case-insensitive) replaced by ``[redacted]``."""
        if not self._values or not text:
            return text
        if self._pattern is None:
            alternatives = sorted(self._values, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(v) for v in alternatives), re.IGNORECASE)
        return self._pattern.sub(REDACTED, text)


def _is_multi(value) -> bool:
    from pydicom.multival import MultiValue

    return isinstance(value, MultiValue)
