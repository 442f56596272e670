"""Genomics tables -> feature groups ``expression``, ``mutations`` and ``cnv``.

Each group: ``patient_id`` (keyed), ``event_time`` = UNDATED (the files carry
no date, so every label time admits them), then one column per gene:

* ``expression``: float32 (``tables.expression.dtype``), log2(x+1) when the
  input is linear, duplicate genes collapsed, NaN for unreadable cells;
* ``mutations``: int8 0/1 deleterious-call indicators; only samples named in
  the MAF get a row;
* ``cnv``: float32 calls in [min_value, max_value] (-2..2), NaN for bad cells.

One sample per patient (tumour first; :mod:`mmray.features.barcodes`).  Gene
signatures (``signatures:`` GMT) are parsed with the expression and
summarised in its manifest (sets, genes found on the platform).
"""

from __future__ import annotations

import numpy as np

from mmray.config import to_dict
from mmray.errors import CohortError
from mmray.features import star_counts
from mmray.features.barcodes import parse_sample
from mmray.features.gmt import genes_found, read_gmt
from mmray.features.mutations import mutation_indicators, read_maf
from mmray.features.omics_io import read_matrix
from mmray.features.omics_transform import collapse_duplicate_genes, log2p1, to_patients
from mmray.features.table_io import cell_failure
from mmray.ingest.report import ModalityReport
from mmray.ingest.tables_common import (
    Scrubber,
    clinical_ids,
    feature_frame,
    finish,
    key_fingerprint,
    log,
    up_to_date,
    write_group,
)


def _skip(ctx, report: ModalityReport, group: str, sources: list[str], params: dict) -> bool:
    if ctx.force or not up_to_date(ctx.store, group, sources=sources, params=params, patient_key=ctx.patient_key):
        return False
    report.n_items = report.n_skipped = ctx.store.manifest(group)["num_rows"]
    report.notes.append(f"{group} already ingested from these files with these settings (--force recomputes)")
    return True


def _patients(values, *, what: str, tumour_only: bool, report: ModalityReport, notes: list[str]):
    patients, assignment = to_patients(values, tumour_only=tumour_only)
    notes += assignment.notes(what)
    report.n_items = int(values.shape[0])
    report.n_done = int(patients.shape[0])
    return patients


def ingest_expression(ctx) -> ModalityReport:
    cohort, cfg = ctx.cohort, ctx.config.expression
    ref = cohort.spec.expression
    path = cohort.part_path("expression")
    report = ModalityReport("expression")
    sheet = cohort.resolve(cfg.sample_sheet) if cfg.sample_sheet else None
    gmt = cohort.part_path("signatures")
    sources = [s for s in (path, sheet, gmt) if s]
    params = {"expression": to_dict(cfg), "orientation": ref.orientation, "tumour_only": ctx.config.tumour_only,
              "patient_ids": key_fingerprint(ctx.patient_key)}
    if _skip(ctx, report, "expression", sources, params):
        return report
    known = clinical_ids(cohort)
    if star_counts.is_star_input(path):
        matrix = star_counts.read_star_counts(path, sample_sheet=sheet, value=cfg.star_value,
                                              gene_id=cfg.star_gene_id, gene_types=cfg.star_gene_types)
    else:
        matrix = read_matrix(path, fmt=ref.format, orientation=ref.orientation, known_ids=known)
    log.info("expression: %d samples x %d genes (%s)", *matrix.values.shape, matrix.orientation)
    failures, notes = list(matrix.failures), list(matrix.notes)
    values, n_dup = collapse_duplicate_genes(matrix.values, how=cfg.duplicate_genes)
    if n_dup:
        notes.append(f"{n_dup} gene(s) appear more than once; collapsed by {cfg.duplicate_genes} "
                     f"(tables.expression.duplicate_genes)")
    values, logged = log2p1(values, mode=cfg.log2)
    notes.append(f"log2(x+1) {'applied' if logged else 'not applied'} (tables.expression.log2={cfg.log2})")
    patients = _patients(values, what="expression", tumour_only=ctx.config.tumour_only, report=report, notes=notes)
    summary = None
    if gmt:
        sets, problems = read_gmt(gmt)
        failures += problems
        found = genes_found(sets, patients.columns)
        summary = {name: {"genes": len(s.genes), "found": len(found[name])} for name, s in sets.items()}
        missing = sum(v["genes"] - v["found"] for v in summary.values())
        notes.append(f"signatures: {len(sets)} gene set(s); {missing} member gene(s) are not on the expression "
                     f"platform and are left out of signature models")
    params = {**params, "log2_applied": logged, "orientation_used": matrix.orientation, "signatures": summary}
    frame = feature_frame(patients, patient_key=ctx.patient_key, dtype=np.dtype(cfg.dtype))
    write_group(ctx, report, "expression", frame, sources=[*matrix.sources, *([gmt] if gmt else [])],
                params=params)
    scrub = Scrubber(ctx.patient_key, set(known) | {parse_sample(s).patient for s in matrix.values.index})
    return finish(report, scrub, failures, notes, ctx.patient_key, files=[*matrix.sources, *([gmt] if gmt else [])])


def ingest_mutations(ctx) -> ModalityReport:
    cohort, cfg = ctx.cohort, ctx.config.mutations
    path = cohort.part_path("mutations")
    report = ModalityReport("mutations")
    params = {"mutations": to_dict(cfg), "tumour_only": ctx.config.tumour_only,
              "patient_ids": key_fingerprint(ctx.patient_key)}
    if _skip(ctx, report, "mutations", [path], params):
        return report
    calls, failures, samples = read_maf(path)
    log.info("mutations: %d calls over %d samples", len(calls), len(samples))
    indicators = mutation_indicators(calls, samples, rule=cfg.rule, classes=cfg.classes,
                                     impact_levels=cfg.impact_levels, genes=cfg.genes, min_samples=cfg.min_samples)
    notes: list[str] = []
    patients = _patients(indicators, what="mutations", tumour_only=ctx.config.tumour_only, report=report, notes=notes)
    notes.append(f"{patients.shape[1]} gene(s) with a deleterious call (rule {cfg.rule}); samples without one are 0, "
                 f"patients absent from the MAF stay missing")
    write_group(ctx, report, "mutations", feature_frame(patients, patient_key=ctx.patient_key, dtype=np.int8),
                sources=[path], params=params)
    scrub = Scrubber(ctx.patient_key, {parse_sample(s).patient for s in samples})
    return finish(report, scrub, failures, notes, ctx.patient_key, files=[path])


def ingest_cnv(ctx) -> ModalityReport:
    cohort, cfg = ctx.cohort, ctx.config.cnv
    ref = cohort.spec.cnv
    path = cohort.part_path("cnv")
    report = ModalityReport("cnv")
    params = {"cnv": to_dict(cfg), "tumour_only": ctx.config.tumour_only,
              "patient_ids": key_fingerprint(ctx.patient_key)}
    if _skip(ctx, report, "cnv", [path], params):
        return report
    fmt = ref.format if ref.format in ("csv", "tsv", "parquet") else "auto"
    if ref.format not in ("auto", "csv", "tsv", "parquet"):
        raise CohortError(f"cnv.format {ref.format!r} is not a matrix format; use auto, csv, tsv or parquet")
    matrix = read_matrix(path, fmt=fmt, orientation="auto", known_ids=clinical_ids(cohort), what="cnv")
    failures, notes = list(matrix.failures), list(matrix.notes)
    values = matrix.values
    arr = values.to_numpy()
    odd = np.isfinite(arr) & ((arr != np.round(arr)) | (arr < cfg.min_value) | (arr > cfg.max_value))
    for i, j in zip(*np.nonzero(odd)):
        sample, gene = values.index[i], values.columns[j]
        column = sample if matrix.orientation == "genes_x_samples" else gene
        failures.append(cell_failure(path=path, line=matrix.line_of(sample, gene), row=None, column=column,
                                     value=f"{arr[i, j]:g}", sample=sample, feature=gene,
                                     reason=f"copy-number call {arr[i, j]:g} (gene {gene}) is not an integer in "
                                            f"[{cfg.min_value}, {cfg.max_value}]; treated as missing"))
    if odd.any():
        values = values.mask(odd)
    patients = _patients(values, what="cnv", tumour_only=ctx.config.tumour_only, report=report, notes=notes)
    write_group(ctx, report, "cnv", feature_frame(patients, patient_key=ctx.patient_key, dtype=np.float32),
                sources=[path], params={**params, "orientation_used": matrix.orientation})
    scrub = Scrubber(ctx.patient_key, clinical_ids(cohort) | {parse_sample(s).patient for s in matrix.values.index})
    return finish(report, scrub, failures, notes, ctx.patient_key, files=[path])
