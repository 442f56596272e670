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
from collections.abc import Callable

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


# Identifiers (not PHI, but linkable to the hospital's records) replaced by keyed labels when pseudonymised.
UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")


class Redactor:
    """Collects PHI values from DICOM headers; :meth:`scrub` removes them from text.

    With ``label`` (pseudonymisation on: ``uid -> stored key``), the study's
    DICOM UIDs and file names are collected too and replaced by their labels,
    so a failure reason still says which file failed without naming it.
    """

    def __init__(self, label: Callable[[str], str] | None = None) -> None:
        self._values: set[str] = set()
        self._labels: dict[str, str] = {}
        self._label = label
        self._pattern: re.Pattern | None = None

    def add_identifier(self, value: str, *, kind: str = "uid") -> None:
        """A UID or file name to replace by its label (no-op without pseudonymisation)."""
        text = str(value).strip()
        if self._label is None or len(text) < _MIN_LEN or text in self._labels:
            return
        self.add_replacement(text, self._label(text if kind == "uid" else f"{kind}:{text}"))

    def add_replacement(self, value: str, label: str) -> None:
        """Replace ``value`` by ``label`` in scrubbed text (e.g. a study folder by its source label)."""
        if value and value != label:
            self._labels[str(value)] = label
            self._pattern = None

    def add_dataset(self, ds: Dataset, *, nested: bool = True, depth: int = 0) -> None:
        """Collect PHI values of ``ds``; with ``nested``, of its sequence items too (enhanced
        images copy patient attributes into converted-attribute sequences)."""
        for keyword in UID_KEYWORDS if self._label is not None else ():
            if keyword in ds:
                self.add_identifier(str(ds.data_element(keyword).value))
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
        """``text`` with every collected PHI value (case-insensitive) replaced by ``[redacted]`` and every
        identifier by its label."""
        if not (self._values or self._labels) or not text:
            return text
        if self._pattern is None:
            alternatives = sorted(self._values | set(self._labels), key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(v) for v in alternatives), re.IGNORECASE)
            self._lower = {k.lower(): v for k, v in self._labels.items()}
        return self._pattern.sub(lambda m: self._lower.get(m.group(0).lower(), REDACTED), text)


def _is_multi(value) -> bool:
    from pydicom.multival import MultiValue

    return isinstance(value, MultiValue)
