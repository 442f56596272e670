"""Scan what mmray wrote for the raw identifiers of a cohort (``mmray privacy-scan``).

With a pseudonym key set, nothing mmray writes may hold a raw patient id, a
sample barcode, a slide or study file name, a folder name, a DICOM UID or PHI
value, or an absolute input path. :func:`cohort_identifiers` collects those
values from the cohort's own files (manifest, tables, DICOM headers); the
scanner then reads every file under the given folders the way a reader would:
Parquet string columns, column names and metadata, SQLite rows, gzip and zip
members, base64 payloads in HTML, and the raw bytes of everything else.

Matching is case-insensitive and also tries the spellings tools produce from
an id (``TCGA-05-1005`` as ``tcga_05_1005`` or ``TCGA.05.1005``); values
shorter than :data:`MIN_LENGTH` characters are too generic to scan for.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import io
import re
import sqlite3
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mmray import uri as uri_mod

MIN_LENGTH = 6
# Folder names that say what a folder holds, not whom: not identifiers.
GENERIC_FOLDERS = frozenset({"slides", "images", "dicom", "series", "studies", "radiology", "pathology",
                             "genomics", "tables", "clinical", "cohort", "cohorts", "data", "input", "inputs",
                             "annotations"})
_DICOM_UID_TAGS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
_DICOM_PHI_TAGS = ("PatientName", "PatientID", "OtherPatientIDs", "AccessionNumber", "StudyID",
                   "ReferringPhysicianName", "InstitutionName", "InstitutionAddress", "PatientAddress")
_BASE64 = re.compile(rb"base64,([A-Za-z0-9+/=]{16,})")


@dataclass(frozen=True)
class Identifier:
    value: str
    kind: str  # patient_id, sample_barcode, file_name, folder_name, input_path, dicom_uid, dicom_phi, item_id


@dataclass(frozen=True)
class Finding:
    file: str
    where: str  # "bytes", "parquet column sources", "sqlite table params", "zip member x", ...
    kind: str
    value: str

    def line(self) -> str:
        return f"{self.file} [{self.where}]: {self.kind} {self.value!r}"


# --------------------------------------------------------------------- the cohort's identifiers


def cohort_identifiers(cohort_path: str | Path, *, also: Iterable[str] = ()) -> list[Identifier]:
    """Every raw identifier of a (local) cohort: ids, barcodes, names, UIDs, PHI, paths; plus ``also``
    (e.g. the names of folders above the cohort, which may be people's names)."""
    from mmray.cohort import load_cohort

    cohort = load_cohort(cohort_path)
    root = Path(cohort.root)
    found: dict[str, str] = {}

    def add(value, kind: str) -> None:
        text = str(value).strip()
        if len(text) >= MIN_LENGTH and text.lower() not in GENERIC_FOLDERS:
            found.setdefault(text, kind)

    add(str(root), "input_path")
    add(root.name, "folder_name")
    add(str(Path(cohort_path).resolve()), "input_path")
    for value in also:
        add(value, "given")
    manifest = cohort.manifest()
    patients = set(manifest["patient_id"]) if len(manifest) else set()
    if cohort.spec.clinical:
        clinical = _read_text_table(cohort.part_path("clinical"))
        patients |= set(clinical.get(cohort.spec.clinical.id_column, pd.Series(dtype=str)).dropna())
    for pid in patients:
        add(pid, "patient_id")
    for row in manifest.to_dict("records"):
        add(row.get("item_id", ""), "item_id")
        path = Path(row["path"])
        add(str(path), "input_path")
        add(path.name, "file_name")
        add(path.name.split(".")[0], "file_name")
        rel = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
        for folder in rel.parts[:-1]:
            add(folder, "folder_name")
        note = str(row.get("annotation") or "").strip()  # a slide's GeoJSON annotation: an input path too
        if note:
            add(note, "input_path")
            add(Path(note).name, "file_name")
            add(Path(note).name.split(".")[0], "file_name")
        if row["modality"] == "ct" and path.exists():
            for name, kind in _dicom_identifiers(path):
                add(name, kind)
    for part in ("manifest", "signatures"):
        if cohort.part_path(part):
            add(cohort.part_path(part), "input_path")
    for part in ("clinical", "expression", "mutations", "cnv"):
        target = cohort.part_path(part)
        if target is None:
            continue
        add(target, "input_path")
        for value in _values_naming_patients(_read_text_table(target), patients):
            add(value, "sample_barcode")
    return [Identifier(v, k) for v, k in sorted(found.items())]


def label_sources(cohort_path: str | Path, patient_key=None) -> dict[str, str]:
    """``SRC- label -> input file`` for a cohort's inputs under ``patient_key`` (default: the configured
    key), so an operator who holds the key can find the file a failure names. Nothing is written."""
    from mmray.cohort import load_cohort
    from mmray.ingest.pseudonym import pseudonymiser_from_env, source_label

    key = patient_key or pseudonymiser_from_env()
    cohort = load_cohort(cohort_path, check_files=False)
    files = [cohort.part_path(p) for p in ("clinical", "expression", "mutations", "cnv", "signatures")]
    manifest = cohort.manifest()
    files += list(manifest["path"]) + [a for a in manifest.get("annotation", pd.Series(dtype=str)) if a]
    labels = {source_label(key, f): f for f in files if f}
    for f in [f for f in files if f and not uri_mod.is_s3(f) and Path(f).is_dir()]:
        labels.update({source_label(key, str(p)): str(p) for p in Path(f).rglob("*") if p.is_file()})
    return labels


def _read_text_table(path: str) -> pd.DataFrame:
    if path.endswith(".parquet"):
        return pd.read_parquet(path).astype(str)
    sep = "\t" if path.endswith((".tsv", ".txt", ".maf")) else ","
    return pd.read_csv(path, sep=sep, dtype=str, comment="#", keep_default_na=False, low_memory=False)


def _values_naming_patients(table: pd.DataFrame, patients: set[str]) -> set[str]:
    """Header names and cells of text columns that contain a patient id (barcodes, aliquots)."""
    if not patients:
        return set()
    pattern = _compile(patients)
    out = {c for c in table.columns if pattern.search(str(c).lower())}
    for col in table.columns:
        values = table[col].dropna().astype(str).unique()
        if len(values) and any(pattern.search(v.lower()) for v in values[:50]):
            out |= {v for v in values if pattern.search(v.lower())}
    return out


def _dicom_identifiers(folder: Path) -> Iterator[tuple[str, str]]:
    import pydicom

    for f in sorted(folder.rglob("*")):
        if not f.is_file():
            continue
        yield f.name, "file_name"
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:  # not DICOM: its name was enough
            continue
        for tag in _DICOM_UID_TAGS:
            if tag in ds:
                yield str(ds.data_element(tag).value), "dicom_uid"
        for tag in _DICOM_PHI_TAGS:
            if tag in ds and ds.data_element(tag).value:
                yield str(ds.data_element(tag).value), "dicom_phi"


# --------------------------------------------------------------------- matching


def _spellings(value: str) -> set[str]:
    low = value.lower()
    return {low, low.replace("-", "_"), low.replace("-", "."), low.replace("^", " ")}


def _compile(values: Iterable[str]) -> re.Pattern:
    """One regex for many literals, as a trie (one branch per position, not one try per literal)."""
    trie: dict = {}
    for v in values:
        node = trie
        for ch in v.lower():
            node = node.setdefault(ch, {})
        node[""] = True

    def render(node: dict) -> str:
        ends = "" in node
        branches = [re.escape(ch) + render(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if ends else body

    return re.compile(render(trie) or "(?!)")


class Scanner:
    """Finds any of ``identifiers`` in files, under every spelling."""

    def __init__(self, identifiers: Iterable[Identifier]):
        self.by_spelling: dict[str, Identifier] = {}
        for ident in sorted(identifiers, key=lambda i: len(i.value)):  # longest wins a shared spelling
            for s in _spellings(ident.value):
                self.by_spelling[s] = ident
        self.pattern = _compile(self.by_spelling)

    def find(self, text: str) -> list[Identifier]:
        hits = {}
        for m in self.pattern.finditer(text.lower()):
            ident = self.by_spelling[m.group(0)]
            hits[ident.value] = ident
        return list(hits.values())

    def scan_file(self, path: Path) -> list[Finding]:
        findings = []
        for where, text in _readings(path):
            findings += [Finding(str(path), where, i.kind, i.value) for i in self.find(text)]
        return findings

    def scan(self, roots: Iterable[str | Path]) -> tuple[list[Finding], int]:
        """``(findings, number of files read)`` for every file under ``roots``."""
        findings, n = [], 0
        for root in roots:
            root = Path(root)
            files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
            for f in files:
                n += 1
                findings += self.scan_file(f)
        return findings, n


# --------------------------------------------------------------------- reading files as a reader would


def _readings(path: Path) -> Iterator[tuple[str, str]]:
    """``(where, text)`` views of one file: its bytes plus decoded contents of the formats that hide text."""
    try:
        data = path.read_bytes()
    except OSError:
        return  # a socket, or a file removed while scanning
    yield from _decoded("bytes", data, name=path.name)


def _decoded(where: str, data: bytes, *, name: str, depth: int = 0) -> Iterator[tuple[str, str]]:
    yield where, data.decode("latin-1")  # 1:1 on bytes: ASCII identifiers match wherever they are stored raw
    if depth > 2:
        return
    if data[:4] == b"PAR1":
        yield from _parquet_text(where, data)
    elif data[:16] == b"SQLite format 3\x00":
        yield from _sqlite_text(where, data)
    elif data[:2] == b"\x1f\x8b":
        try:
            yield from _decoded(f"{where} (gunzipped)", gzip.decompress(data), name=name, depth=depth + 1)
        except (OSError, EOFError):
            pass
    elif data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                for member in z.namelist():
                    yield f"{where} zip member {member}", member
                    yield from _decoded(f"{where} zip member {member}", z.read(member), name=member,
                                        depth=depth + 1)
        except (zipfile.BadZipFile, OSError):
            pass
    for m in _BASE64.finditer(data):
        try:
            blob = base64.b64decode(m.group(1), validate=True)
        except (binascii.Error, ValueError):
            continue
        yield from _decoded(f"{where} base64 payload", blob, name=name, depth=depth + 1)


def _parquet_text(where: str, data: bytes) -> Iterator[tuple[str, str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - not readable as Parquet: the raw bytes were scanned
        return
    meta = table.schema.metadata or {}
    yield f"{where} parquet metadata", " ".join(f"{k!r}:{v!r}" for k, v in meta.items())
    yield f"{where} parquet column names", "\n".join(table.column_names)
    for name, column in zip(table.column_names, table.columns):
        strings = _arrow_strings(column.combine_chunks() if column.num_chunks else pa.array([], column.type))
        if strings:
            yield f"{where} parquet column {name}", "\n".join(strings)


def _arrow_strings(array) -> list[str]:
    import pyarrow as pa
    import pyarrow.compute as pc

    t = array.type
    if pa.types.is_dictionary(t):
        return _arrow_strings(array.dictionary)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return [s for s in array.to_pylist() if s]
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return [b.decode("latin-1") for b in array.to_pylist() if b]
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _arrow_strings(pc.list_flatten(array))
    if pa.types.is_struct(t):
        return [s for i in range(t.num_fields) for s in _arrow_strings(array.field(i))]
    if pa.types.is_map(t):
        return _arrow_strings(array.keys) + _arrow_strings(array.items)
    return []


def _sqlite_text(where: str, data: bytes) -> Iterator[tuple[str, str]]:
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".db") as tmp:  # sqlite3 opens files, not bytes
        tmp.write(data)
        tmp.flush()
        try:
            con = sqlite3.connect(f"file:{tmp.name}?mode=ro", uri=True)
        except sqlite3.Error:
            return
        try:
            tables = [r[0] for r in con.execute("select name from sqlite_master where type='table'")]
            for table in tables:
                cells = []
                for row in con.execute(f'select * from "{table}"'):
                    cells += [c.decode("latin-1") if isinstance(c, bytes) else str(c) for c in row if c is not None]
                yield f"{where} sqlite table {table}", "\n".join(cells)
        except sqlite3.Error:
            return
        finally:
            con.close()
