"""Protein matrix (RPPA-style) -> feature group ``proteins``.

The group: ``patient_id`` (keyed), ``event_time`` = UNDATED, one float32
column per protein (antibody) with the file's values (RPPA level-4 data is
already log2 and median-centred: no transform), NaN for unreadable cells.
One sample per patient (tumour first, :mod:`mmray.features.barcodes`).

The gene behind each protein is recorded in the manifest's params
(``protein_genes``: protein -> gene symbol), from ``proteins.gene_map`` (a
``protein``, ``gene`` table), ``proteins.gene_column`` (a column of a
proteins x samples file) or the protein name itself up to a phospho-site
suffix (``AKT1_pS473`` -> ``AKT1``).  The graph model links gene nodes to
protein nodes with it (codes_for edges by symbol).
"""

from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd

from mmray.config import to_dict
from mmray.errors import CohortError
from mmray.features.barcodes import parse_sample
from mmray.features.omics_io import read_matrix
from mmray.features.omics_transform import collapse_duplicate_genes, to_patients
from mmray.features.table_io import read_any_table, read_text
from mmray.ingest.report import ModalityReport
from mmray.ingest.tables_common import (Scrubber, clinical_ids, feature_frame, finish, key_fingerprint, log,
                                        up_to_date, write_group)
from mmray.ingest.tables_config import TablesConfig

CONFIG = TablesConfig
_ORIENTATION = {"auto": "auto", "samples_x_proteins": "samples_x_genes", "proteins_x_samples": "genes_x_samples"}
_PHOSPHO = re.compile(r"^(.+?)[_-]p[STY]\d.*$")


def gene_of_protein(name: str) -> str:
    """The gene symbol a protein name implies: the name up to a phospho-site suffix (``AKT1_pS473`` -> ``AKT1``)."""
    m = _PHOSPHO.match(str(name).strip())
    return m.group(1) if m else str(name).strip()


def read_gene_map(path: str) -> dict[str, str]:
    """``protein -> gene`` from a table with columns ``protein`` and ``gene`` (case-insensitive names)."""
    table = read_any_table(path, what="proteins.gene_map")
    lower = {h.strip().lower(): h for h in table.header}
    if "protein" not in lower or "gene" not in lower:
        raise CohortError(f"{table.name}: a protein -> gene map needs columns 'protein' and 'gene' "
                          f"(found: {', '.join(table.header)})")
    pairs = zip(table.frame[lower["protein"]].astype(str).str.strip(), table.frame[lower["gene"]].astype(str).str.strip())
    return {p: g for p, g in pairs if p and g}


def _column_map(path: str, column: str, fmt: str) -> dict[str, str]:
    """``protein -> gene`` from ``column`` of a proteins x samples file (first column: protein names)."""
    sep = "," if fmt == "csv" or (fmt == "auto" and path.lower().endswith(".csv")) else "\t"
    frame = pd.read_csv(io.StringIO(read_text(path, what="proteins")), sep=sep, dtype=str, keep_default_na=False)
    if column not in frame.columns:
        raise CohortError(f"proteins.gene_column {column!r} is not a column of {path}; columns: "
                          f"{', '.join(frame.columns[:12])}")
    return {str(p).strip(): str(g).strip() for p, g in zip(frame.iloc[:, 0], frame[column]) if str(g).strip()}


def ingest_proteins(ctx) -> ModalityReport:
    cohort, cfg = ctx.cohort, ctx.config.proteins
    ref = cohort.spec.proteins
    path = cohort.part_path("proteins")
    gene_map = cohort.resolve(ref.gene_map) if ref.gene_map else None
    report = ModalityReport("proteins")
    sources = [s for s in (path, gene_map) if s]
    params = {"proteins": to_dict(cfg), "orientation": ref.orientation, "gene_column": ref.gene_column,
              "tumour_only": ctx.config.tumour_only, "patient_ids": key_fingerprint(ctx.patient_key)}
    if not ctx.force and up_to_date(ctx.store, "proteins", sources=sources, params=params,
                                    patient_key=ctx.patient_key):
        report.n_items = report.n_skipped = ctx.store.manifest("proteins")["num_rows"]
        report.notes.append("proteins already ingested from these files with these settings (--force recomputes)")
        return report
    known = clinical_ids(cohort)
    matrix = read_matrix(path, fmt=ref.format, orientation=_ORIENTATION[ref.orientation], known_ids=known,
                         what="proteins")
    log.info("proteins: %d samples x %d proteins (%s)", *matrix.values.shape, matrix.orientation)
    failures, notes = list(matrix.failures), list(matrix.notes)
    values, n_dup = matrix.values, int(pd.Index(matrix.values.columns[matrix.values.columns.duplicated()]).nunique())
    if n_dup and cfg.duplicate_proteins == "mean":
        values = values.T.groupby(level=0, sort=False).mean().T[list(dict.fromkeys(values.columns))]
    elif n_dup:
        values, _ = collapse_duplicate_genes(values, how="max_variance")
    if n_dup:
        notes.append(f"{n_dup} protein(s) appear more than once; collapsed by {cfg.duplicate_proteins} "
                     f"(tables.proteins.duplicate_proteins)")
    if gene_map:
        genes, how = read_gene_map(gene_map), "gene_map"
    elif ref.gene_column:
        genes, how = _column_map(path, ref.gene_column, ref.format), "gene_column"
    else:
        genes, how = {}, "symbol"
    unmapped = [p for p in values.columns if p not in genes]
    if how != "symbol" and unmapped:
        notes.append(f"{len(unmapped)} protein(s) not in the {how} ({unmapped[:5]}): gene taken from the name")
    protein_genes = {p: genes.get(p) or gene_of_protein(p) for p in values.columns}
    ids = clinical_ids(cohort) | {parse_sample(s).patient for s in matrix.values.index}
    patients, assignment = to_patients(values, tumour_only=ctx.config.tumour_only)
    notes += assignment.notes("proteins")
    report.n_items, report.n_done = int(values.shape[0]), int(patients.shape[0])
    notes.append(f"{patients.shape[1]} protein(s) on {len(set(protein_genes.values()))} gene(s) "
                 f"(genes from the {how})")
    write_group(ctx, report, "proteins",
                feature_frame(patients, patient_key=ctx.patient_key, dtype=np.dtype(cfg.dtype)),
                sources=sources, params={**params, "orientation_used": matrix.orientation,
                                         "protein_genes": protein_genes, "gene_source": how})
    return finish(report, Scrubber(ctx.patient_key, ids), failures, notes, ctx.patient_key, files=sources)
