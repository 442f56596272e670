"""Find the CT series and their segmentations in a patient's DICOM folder.

A hospital export is a folder of files named anything (often by
SOPInstanceUID), holding several studies and series: CT reconstructions,
scouts, DICOM SEGs, RTSTRUCTs, sometimes a DICOMDIR or a README.  Discovery
reads every file once, in one read: it parses the dataset from memory (about a
third cheaper than pydicom's buffered reads from the file), keeps the file's
SHA-256 for the resume signature, and keeps the pixel data for the volume, up
to :data:`IN_MEMORY_PIXEL_BYTES` per folder; beyond that, pixel data is
dropped and read back from the file when used.  It groups instances by StudyInstanceUID and
SeriesInstanceUID, and pairs each CT series with the SEG that references it
(ReferencedSeriesSequence; falling back to the SEG's source images, then to a
unique CT series with the same FrameOfReferenceUID).

Files without the DICOM preamble are skipped (counted in the notes); files
that look like DICOM but cannot be parsed are listed in ``unreadable``: the
caller fails the patient, since a lost file may be a slice of the series.

``s3://`` folders are downloaded to local scratch first (:func:`local_folder`),
with retries, and removed afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import posixpath
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
    RTStructureSetStorage,
    SegmentationStorage,
)

from mmray import uri as uri_mod
from mmray.errors import InputError
from mmray.ingest import dicom_raw as raw
from mmray.ingest.phi import Redactor
from mmray.ingest.retry import with_retry

CT_SOP_CLASSES = frozenset({CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage})
MEDIA_DIRECTORY_STORAGE = "1.2.840.10008.1.3.10"  # DICOMDIR
IN_MEMORY_PIXEL_BYTES = 1 << 30  # pixel data held per scanned folder; later files re-read theirs when used
PIXEL_DATA = 0x7FE00010
DICOM_PREFIX_END = 132  # 128-byte preamble + b"DICM"


@dataclass(eq=False)
class Instance:
    """One DICOM file: where it is and its header (pixel data not read yet)."""

    path: str  # local path
    name: str  # path relative to the patient's folder (for messages)
    ds: Dataset
    sha256: bytes = b""  # of the file's bytes, as read

    @property
    def sop_uid(self) -> str:
        return raw.text(self.ds, "SOPInstanceUID") or ""


@dataclass(eq=False)
class Series:
    study_uid: str
    series_uid: str
    kind: str  # "ct", "seg", "rtstruct" or "other"
    instances: list[Instance] = field(default_factory=list)

    @property
    def first(self) -> Dataset:
        return self.instances[0].ds

    def attr(self, keyword: str, default: str = "") -> str:
        return str(self.first.get(keyword, default) or default)

    def describe(self) -> str:
        """Short, PHI-free description for notes: modality, series number, file count."""
        number = self.attr("SeriesNumber", "?")
        return f"{self.attr('Modality', self.kind.upper())} series #{number} ({len(self.instances)} file(s))"

    def referenced_series_uids(self) -> list[str]:
        """Series a SEG/RTSTRUCT says it was drawn on (ReferencedSeriesSequence)."""
        out = []
        for ds in (i.ds for i in self.instances):
            for item in ds.get("ReferencedSeriesSequence", []):
                uid = str(item.get("SeriesInstanceUID", ""))
                if uid and uid not in out:
                    out.append(uid)
        return out

    def source_sop_uids(self) -> set[str]:
        """SOPInstanceUIDs of the source images named in a SEG's derivation sequences."""
        uids: set[str] = set()
        for ds in (i.ds for i in self.instances):
            groups = list(ds.get("SharedFunctionalGroupsSequence", []))
            groups += list(ds.get("PerFrameFunctionalGroupsSequence", []))[:1]
            for group in groups:
                for deriv in group.get("DerivationImageSequence", []):
                    for src in deriv.get("SourceImageSequence", []):
                        uids.add(str(src.get("ReferencedSOPInstanceUID", "")))
        return uids - {""}


@dataclass(eq=False)
class StudyPair:
    """A CT series and the SEG instance that segments it."""

    study_uid: str
    ct: Series
    seg: Series
    seg_instance: Instance

    @property
    def study_date(self) -> str:
        return self.ct.attr("StudyDate") or self.seg.attr("StudyDate")

    def sort_key(self) -> tuple:
        return (self.study_date, self.ct.attr("StudyTime"), self.ct.attr("SeriesDate"),
                self.ct.attr("SeriesTime"), len(self.ct.instances), self.ct.series_uid)


@dataclass
class Discovery:
    series: list[Series]
    pairs: list[StudyPair]
    notes: list[str]
    unreadable: list[str]  # names of DICOM-looking files that could not be parsed, with the reason
    non_dicom: int  # files skipped because they are not DICOM


def _kind(ds: Dataset) -> str:
    sop_class = raw.text(ds, "SOPClassUID") or ""
    if sop_class in CT_SOP_CLASSES:
        return "ct"
    if sop_class == SegmentationStorage:
        return "seg"
    if sop_class == RTStructureSetStorage:
        return "rtstruct"
    return "other"


def _is_dicomdir(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    return str(getattr(meta, "MediaStorageSOPClassUID", "")) == MEDIA_DIRECTORY_STORAGE


def read_instance(path: str) -> tuple[Dataset, bytes]:
    """``(dataset, sha256 of the file)`` from one read of the file; pixel data is in memory.

    Raises :class:`InvalidDicomError` for a file without the DICOM prefix
    (checked on its first 132 bytes, so a large non-DICOM file is not read).
    """
    with open(path, "rb") as f:
        head = f.read(DICOM_PREFIX_END)
        if len(head) < DICOM_PREFIX_END or head[128:] != b"DICM":
            raise InvalidDicomError(f"{path} has no DICOM preamble")
        data = head + f.read()
    return pydicom.dcmread(io.BytesIO(data)), hashlib.sha256(data).digest()


def defer_pixel_data(ds: Dataset, path: str) -> int:
    """Drop ``ds``'s pixel bytes from memory; pydicom reads them back from ``path`` when accessed
    (checking the file did not change). Returns the bytes freed."""
    elem = ds.get_item(PIXEL_DATA, keep_deferred=True)
    if not isinstance(elem, RawDataElement) or elem.value is None:
        return 0
    ds[PIXEL_DATA] = elem._replace(value=None)
    ds.filename, ds.fileobj_type, ds.timestamp = path, open, os.stat(path).st_mtime
    return len(elem.value)


def _pixel_bytes(ds: Dataset) -> int:
    elem = ds.get_item(PIXEL_DATA, keep_deferred=True)
    value = getattr(elem, "value", None)
    return len(value) if isinstance(value, (bytes, bytearray)) else 0


def scan_folder(folder: str, *, redactor: Redactor | None = None) -> Discovery:
    """Read every file's header under ``folder`` (local) and pair CT series with SEGs."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"DICOM folder {folder} does not exist or is not a folder; the manifest path "
                         f"of a CT row must be the patient's DICOM folder", stage="discover")
    series: dict[tuple[str, str], Series] = {}
    unreadable: list[str] = []
    non_dicom = 0
    held = 0  # pixel bytes kept in memory
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = path.relative_to(root).as_posix()
        if redactor is not None:  # file names may be UIDs, MRNs or names: labelled when pseudonymised
            redactor.add_identifier(name, kind="file")
            redactor.add_identifier(path.name, kind="file")
            redactor.add_identifier(str(path), kind="file")
        try:
            ds, digest = read_instance(str(path))
            held += _pixel_bytes(ds)
            if held > IN_MEMORY_PIXEL_BYTES:
                held -= defer_pixel_data(ds, str(path))
        except InvalidDicomError:  # no DICOM preamble: README, .DS_Store, spreadsheets
            non_dicom += 1
            continue
        except (OSError, ValueError, EOFError, KeyError, TypeError) as e:
            reason = redactor.scrub(f"{type(e).__name__}: {e}") if redactor else type(e).__name__
            unreadable.append(f"{name} ({reason})")
            continue
        if _is_dicomdir(ds):
            continue  # an index of the files, not an instance
        study, series_uid = raw.text(ds, "StudyInstanceUID") or "", raw.text(ds, "SeriesInstanceUID") or ""
        if redactor is not None:
            redactor.add_identifier(raw.text(ds, "SOPInstanceUID") or "")
        if redactor is not None and ((study, series_uid) not in series or "NumberOfFrames" in ds):
            redactor.add_dataset(ds)  # patient/study attributes: the first file of a series (and every multi-frame)
        if not raw.text(ds, "SOPClassUID") or not study or not series_uid:  # pydicom reads truncated files silently
            unreadable.append(f"{name} (no SOPClassUID, StudyInstanceUID or SeriesInstanceUID: truncated?)")
            continue
        entry = series.setdefault((study, series_uid), Series(study, series_uid, _kind(ds)))
        entry.instances.append(Instance(path=str(path), name=name, ds=ds, sha256=digest))
    found = list(series.values())
    pairs, notes = pair_series(found)
    if non_dicom:
        notes.append(f"skipped {non_dicom} non-DICOM file(s)")
    return Discovery(series=found, pairs=pairs, notes=notes, unreadable=unreadable, non_dicom=non_dicom)


def pair_series(series: list[Series]) -> tuple[list[StudyPair], list[str]]:
    """Pair each CT series with the SEG that references it; notes say what was left out."""
    cts = {s.series_uid: s for s in series if s.kind == "ct"}
    sop_to_series = {i.sop_uid: s.series_uid for s in cts.values() for i in s.instances}
    notes: list[str] = []
    by_ct: dict[str, list[tuple[Series, Instance]]] = {}
    for seg in (s for s in series if s.kind == "seg"):
        for inst in seg.instances:
            one = Series(seg.study_uid, seg.series_uid, "seg", [inst])
            targets = [u for u in one.referenced_series_uids() if u in cts]
            if not targets:
                targets = sorted({sop_to_series[u] for u in one.source_sop_uids() if u in sop_to_series})
            if not targets:
                frame = str(inst.ds.get("FrameOfReferenceUID", ""))
                same = [s.series_uid for s in cts.values()
                        if s.study_uid == seg.study_uid and frame and s.attr("FrameOfReferenceUID") == frame]
                targets = same if len(same) == 1 else []
            if not targets:
                notes.append(f"{seg.describe()} ({inst.name}) references no CT series in the folder; ignored")
            for t in targets:
                by_ct.setdefault(t, []).append((seg, inst))
    pairs = []
    for uid, ct in cts.items():
        segs = by_ct.get(uid, [])
        if not segs:
            notes.append(f"{ct.describe()} has no segmentation; not used")
            continue
        segs.sort(key=lambda si: (_attr(si[1].ds, "ContentDate"), _attr(si[1].ds, "ContentTime"),
                                  _attr(si[1].ds, "SeriesDate"), _attr(si[1].ds, "SeriesTime"),
                                  si[1].sop_uid))
        if len(segs) > 1:
            notes.append(f"{ct.describe()} has {len(segs)} SEGs; using the most recent ({segs[-1][1].name})")
        seg, inst = segs[-1]
        pairs.append(StudyPair(study_uid=ct.study_uid, ct=ct, seg=seg, seg_instance=inst))
    rtstructs = [s for s in series if s.kind == "rtstruct"]
    if rtstructs:
        notes.append(f"{len(rtstructs)} RTSTRUCT series found; RTSTRUCT is not read (use DICOM SEG)")
    return sorted(pairs, key=StudyPair.sort_key), notes


def _attr(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "")


@contextlib.contextmanager
def local_folder(folder_uri: str, *, scratch_dir: str | None = None, tries: int = 4,
                 base_delay_s: float = 0.5, threads: int = 8) -> Iterator[str]:
    """Yield a local folder holding ``folder_uri``'s files: the folder itself, or for
    ``s3://`` a scratch copy (downloaded with retries, removed on exit)."""
    if not uri_mod.is_s3(folder_uri):
        yield str(folder_uri)
        return
    fs, base = uri_mod.filesystem(folder_uri)
    try:
        files = with_retry(lambda: uri_mod.list_files(folder_uri), what=f"list {folder_uri}", tries=tries,
                           base_delay_s=base_delay_s)
    except FileNotFoundError as e:
        raise InputError(f"DICOM folder {folder_uri} does not exist; check the manifest path",
                         stage="discover") from e
    base = base.rstrip("/")
    with tempfile.TemporaryDirectory(prefix="mmray-ct-", dir=scratch_dir) as tmp:
        def fetch(file_uri: str) -> None:
            path = file_uri[len("s3://"):]
            rel = posixpath.relpath(path, base)
            target = os.path.join(tmp, *rel.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)

            def download() -> None:
                with fs.open_input_stream(path) as src, open(target, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)

            with_retry(download, what=f"download {file_uri}", tries=tries, base_delay_s=base_delay_s)

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            list(pool.map(fetch, files))
        yield tmp
