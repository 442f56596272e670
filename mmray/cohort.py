"""The cohort spec: ``cohort.yaml``, the contract every stage reads.

A cohort names its parts, each optional::

    name: nsclc-demo
    manifest: manifest.csv            # patient_id, modality (wsi|ct), path
    clinical: {path: clinical.csv, id_column: case_submitter_id}
    expression: {path: expression.tsv, orientation: auto}
    mutations: mutations.maf
    cnv: cnv.tsv
    signatures: signatures.gmt
    proteins: {path: rppa.tsv, orientation: samples_x_proteins, gene_map: protein_map.tsv}
    interactions: interactions.tsv    # source, target, type (ppi|regulates|codes_for|...), [score]
    labels: {time_days: overall_survival_days, event: vital_status,
             event_value: Dead, subtype: histology,
             response: best_response, toxicity: [grade3plus_neutropenia], toxicity_value: "Yes"}

Relative paths are relative to the folder holding ``cohort.yaml``; any path may
be an ``s3://`` URI.  ``load_cohort`` validates everything at once and raises a
:class:`~mmray.errors.ConfigError` whose problems name the file, the field and
the fix.  See ``docs/cohort.md``.
"""

from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from mmray import uri
from mmray.config import build, load_yaml
from mmray.errors import ConfigError

MODALITIES = ("wsi", "ct")
MANIFEST_COLUMNS = ("patient_id", "modality", "path")
# Optional columns: item_id, acquisition_date, mpp (a slide's level-0 micrometres per pixel, overriding the file's),
# annotation (a slide's QuPath GeoJSON tumour annotation; relative to the manifest like path)


def manifest_mpp(text) -> float | None:
    """The manifest's ``mpp`` cell as a number; None when the column is absent or the cell empty.

    Raises ValueError saying what is expected.
    """
    text = "" if text is None else str(text).strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"mpp {text!r} is not a resolution; give the slide's level-0 micrometres per pixel as a "
                         f"positive number (e.g. 0.25 for a 40x scan, 0.5 for 20x), or leave it empty to use the "
                         f"file's")
    return value


@dataclass(frozen=True)
class TableRef:
    """A table file.  ``format: auto`` decides by extension."""

    path: str
    format: Literal["auto", "csv", "tsv", "parquet", "maf", "gmt"] = "auto"


@dataclass(frozen=True)
class ClinicalRef:
    path: str
    id_column: str = "patient_id"
    format: Literal["auto", "csv", "tsv", "parquet"] = "auto"


@dataclass(frozen=True)
class ExpressionRef:
    path: str
    orientation: Literal["auto", "genes_x_samples", "samples_x_genes"] = "auto"
    format: Literal["auto", "csv", "tsv", "parquet"] = "auto"


@dataclass(frozen=True)
class ProteinsRef:
    """A protein matrix (RPPA-style: samples x proteins, or proteins x samples).

    The gene behind each protein: ``gene_map`` (a table with columns
    ``protein`` and ``gene``), or ``gene_column`` (a column of a
    proteins x samples file holding the gene symbol), else the protein name
    itself up to a phospho-site suffix (``AKT1_pS473`` -> ``AKT1``).
    """

    path: str
    orientation: Literal["auto", "samples_x_proteins", "proteins_x_samples"] = "auto"
    format: Literal["auto", "csv", "tsv", "parquet"] = "auto"
    gene_map: str | None = None
    gene_column: str | None = None

    def validate(self):
        if self.gene_map and self.gene_column:
            yield ("gene_map", "give gene_map (a protein -> gene table) or gene_column, not both")


@dataclass(frozen=True)
class LabelsSpec:
    """Which clinical columns hold the labels.

    ``event_value`` is the value of ``event`` that means the event happened
    (e.g. ``Dead``); compared as text, so ``1`` and ``"1"`` both work.
    ``index_date`` optionally names a date column used as each patient's
    prediction time (``event_time``) for point-in-time joins.
    """

    time_days: str | None = None
    event: str | None = None
    event_value: str = "1"
    subtype: str | None = None
    index_date: str | None = None
    response: str | None = None  # categorical treatment response (e.g. complete / partial / none)
    response_classes: tuple[str, ...] = ()  # class order; default: sorted values
    toxicity: tuple[str, ...] = ()  # one or more binary columns (e.g. grade-3+ adverse events)
    toxicity_value: str = "1"  # the value meaning the toxicity happened (compared as text)

    def validate(self):
        if (self.time_days is None) != (self.event is None):
            yield ("", "give both time_days and event for survival labels, or neither")
        if len(set(self.toxicity)) != len(self.toxicity):
            yield ("toxicity", f"lists a column twice: {list(self.toxicity)}")


@dataclass(frozen=True)
class CohortSpec:
    name: str = "cohort"
    manifest: str | None = None
    clinical: ClinicalRef | None = None
    expression: ExpressionRef | None = None
    mutations: TableRef | None = None
    cnv: TableRef | None = None
    signatures: TableRef | None = None
    proteins: ProteinsRef | None = None
    interactions: TableRef | None = None
    labels: LabelsSpec | None = None


@dataclass(frozen=True)
class Cohort:
    """A validated cohort: the spec plus resolved absolute paths / URIs."""

    spec: CohortSpec
    spec_path: str
    root: str

    def resolve(self, path: str) -> str:
        return uri.resolve(path, relative_to=self.root)

    def part_path(self, part: str) -> str | None:
        """Resolved path of ``manifest``, ``clinical``, ``expression``, ... or None."""
        ref = getattr(self.spec, part)
        if ref is None:
            return None
        return self.resolve(ref if isinstance(ref, str) else ref.path)

    def manifest(self) -> pd.DataFrame:
        """Manifest rows with ``path`` resolved; empty frame when there is none."""
        path = self.part_path("manifest")
        if path is None:
            return pd.DataFrame(columns=list(MANIFEST_COLUMNS))
        df = read_manifest(path)
        base = uri.parent(path)
        df["path"] = [uri.resolve(p, relative_to=base) for p in df["path"]]
        if "annotation" in df.columns:
            df["annotation"] = [uri.resolve(a.strip(), relative_to=base) if a.strip() else ""
                                for a in df["annotation"]]
        return df

    def modalities(self) -> list[str]:
        """Modalities present: table parts plus the image modalities in the manifest."""
        present = [p for p in ("clinical", "expression", "mutations", "cnv", "proteins") if getattr(self.spec, p)]
        if self.spec.interactions or self.spec.signatures:
            present.append("knowledge")  # prior knowledge: the interaction network and the gene sets
        if self.spec.manifest:
            present += [m for m in MODALITIES if (self.manifest()["modality"] == m).any()]
        return present


_REF_FIELDS = ("clinical", "expression", "mutations", "cnv", "signatures", "proteins", "interactions")


def load_cohort(path: str | Path, *, check_files: bool = True) -> Cohort:
    """Read and validate ``cohort.yaml``; every problem is reported at once."""
    path = str(path)
    if uri.is_s3(path):
        import yaml

        raw = yaml.safe_load(uri.read_bytes(path)) or {}
        root = uri.parent(path)
    else:
        raw = load_yaml(path)
        root = str(Path(path).resolve().parent)
    # Shorthand: `expression: expression.tsv` means `expression: {path: expression.tsv}`.
    for key in _REF_FIELDS:
        if isinstance(raw.get(key), str):
            raw[key] = {"path": raw[key]}
    labels = raw.get("labels")
    if isinstance(labels, dict) and isinstance(labels.get("toxicity"), str):
        labels["toxicity"] = [labels["toxicity"]]  # one toxicity column may be given as a plain name
    spec = build(CohortSpec, raw, source=path)
    cohort = Cohort(spec=spec, spec_path=path, root=root)
    problems: list[tuple[str, str]] = []
    if check_files:
        problems += _check_files(cohort)
    if problems:
        raise ConfigError(problems, source=path)
    return cohort


def _check_files(cohort: Cohort) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    spec = cohort.spec
    for part in ("manifest",) + _REF_FIELDS:
        target = cohort.part_path(part)
        if target is None:
            continue
        if not uri.is_s3(target) and not Path(target).exists():
            field = part if part == "manifest" else f"{part}.path"
            problems.append((field, f"file not found: {target}; fix the path (relative paths are "
                                    f"relative to {cohort.root}) or remove the '{part}' entry"))
    if spec.proteins and spec.proteins.gene_map:
        target = cohort.resolve(spec.proteins.gene_map)
        if not uri.is_s3(target) and not Path(target).exists():
            problems.append(("proteins.gene_map", f"file not found: {target}; fix the path (relative to "
                                                  f"{cohort.root}) or remove gene_map"))
    found = {p for p, _ in problems}
    if spec.manifest and "manifest" not in found:
        problems += _check_manifest(cohort.part_path("manifest"))
    if spec.labels and not spec.clinical:
        problems.append(("labels", "labels name clinical columns, but the cohort has no 'clinical' table; "
                                   "add clinical: {path: ..., id_column: ...}"))
    if spec.clinical and "clinical.path" not in found:
        problems += _check_clinical(cohort)
    return problems


def read_manifest(path: str) -> pd.DataFrame:
    """Read a manifest CSV as text columns; raises ConfigError naming the file."""
    try:
        with uri.open_input(path) as f:
            df = pd.read_csv(io.BytesIO(f.read()), dtype=str, keep_default_na=False)
    except Exception as e:  # parser errors, unreadable files
        raise ConfigError([("manifest", f"cannot read {path} as CSV: {e}")], source=path) from e
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise ConfigError(
            [("manifest", f"{path} lacks column(s) {', '.join(missing)}; the header must include "
                          f"{','.join(MANIFEST_COLUMNS)} (found: {', '.join(df.columns)})")],
            source=path,
        )
    for col in MANIFEST_COLUMNS:
        df[col] = df[col].str.strip()
    return df


def _check_manifest(path: str) -> list[tuple[str, str]]:
    try:
        df = read_manifest(path)
    except ConfigError as e:
        return e.problems
    problems = []
    base = uri.parent(path)
    for i, row in enumerate(df.itertuples(index=False)):
        line = i + 2  # header is line 1
        where = f"manifest ({Path(path).name} line {line})"
        if not row.patient_id:
            problems.append((where, "patient_id is empty; give the patient's identifier"))
        if row.modality not in MODALITIES:
            problems.append((where, f"modality {row.modality!r} is not one of {', '.join(MODALITIES)}"))
        if "mpp" in df.columns:
            try:
                manifest_mpp(df["mpp"].iloc[i])
            except ValueError as e:
                problems.append((where, str(e)))
        note = str(df["annotation"].iloc[i]).strip() if "annotation" in df.columns else ""
        if note and row.modality != "wsi":
            problems.append((where, f"annotation {note!r} is given for a {row.modality} row; only slides (wsi) "
                                    f"take a GeoJSON annotation: leave the cell empty"))
        elif note and not uri.is_s3(note) and not Path(uri.resolve(note, relative_to=base)).exists():
            problems.append((where, f"annotation not found: {uri.resolve(note, relative_to=base)} (paths are "
                                    f"relative to the manifest's folder; leave the cell empty for no annotation)"))
        if not row.path:
            problems.append((where, "path is empty; give the slide file or DICOM folder"))
        elif not uri.is_s3(row.path):
            target = uri.resolve(row.path, relative_to=base)
            if not Path(target).exists():
                problems.append((where, f"path not found: {target} (paths are relative to the manifest's folder)"))
    return problems


def read_table_header(path: str) -> list[str]:
    """Column names of a CSV/TSV/Parquet table without reading it all."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        with uri.open_input(path) as f:
            return list(pq.read_schema(f).names)
    sep = "\t" if path.endswith((".tsv", ".txt", ".maf")) else ","
    with uri.open_input(path) as f:
        return list(pd.read_csv(io.BytesIO(f.read()), sep=sep, nrows=0, comment="#").columns)


def _check_clinical(cohort: Cohort) -> list[tuple[str, str]]:
    spec = cohort.spec
    path = cohort.part_path("clinical")
    try:
        columns = read_table_header(path)
    except Exception as e:
        return [("clinical.path", f"cannot read {path}: {e}")]
    problems = []
    name = Path(path).name
    if spec.clinical.id_column not in columns:
        problems.append(("clinical.id_column", f"column {spec.clinical.id_column!r} not in {name}; "
                                               f"set id_column to one of: {', '.join(columns)}"))
    if spec.labels:
        for field in ("time_days", "event", "subtype", "index_date", "response"):
            col = getattr(spec.labels, field)
            if col is not None and col not in columns:
                problems.append((f"labels.{field}", f"column {col!r} not in {name}; "
                                                    f"choose one of: {', '.join(columns)}"))
        for col in spec.labels.toxicity:
            if col not in columns:
                problems.append(("labels.toxicity", f"column {col!r} not in {name}; "
                                                    f"choose among: {', '.join(columns)}"))
    return problems


def spec_to_dict(spec: CohortSpec) -> dict:
    return dataclasses.asdict(spec)
