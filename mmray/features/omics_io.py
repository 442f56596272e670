"""Numeric omics matrices (expression, gene-level CNV) from TSV/CSV/Parquet.

:func:`read_matrix` returns samples x features whatever the file's
orientation.  ``orientation="auto"`` decides which side holds the samples by
matching identifiers: a side whose ids are TCGA barcodes or clinical patient
ids holds the samples; failing that, a side of Ensembl gene ids
(``ENSG...``) holds the genes.  When neither rule decides, a
:class:`~mmray.errors.CohortError` names the file and asks for
``expression.orientation`` in cohort.yaml.

Bad input, cell by cell (see :mod:`mmray.features.table_io`):

* a non-numeric cell (``NA?``, ``1.2.3``) becomes missing and is reported with
  file, line, column and value; the rest of its row and column is kept;
* a row with the wrong number of fields is dropped and reported;
* a column whose every cell is text (``Cytoband``) and the known per-gene
  annotation columns (``Locus ID``, ``Entrez_Gene_Id``, ...) are not samples:
  they are dropped with a note.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mmray import uri
from mmray.errors import CohortError
from mmray.features.barcodes import is_barcode
from mmray.features.table_io import (NA_TOKENS, cell_failure, file_name, guess_sep, numeric_cells, read_text,
                                     row_failure, scan_lines)

ORIENTATIONS = ("auto", "genes_x_samples", "samples_x_genes")
ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?(_PAR_Y)?$")
# Per-gene annotation columns of genes x samples files (GISTIC, GDC, cBioPortal), matched lowercase.
GENE_ANNOTATIONS = frozenset({"locus id", "locus_id", "entrez_gene_id", "entrez_id", "entrez", "gene id",
                              "gene_id", "gene_name", "gene_type", "cytoband", "description", "length",
                              "gene_length", "chromosome", "chrom", "start", "end", "strand"})


@dataclass
class Matrix:
    """Samples x features read from one or more files."""

    values: pd.DataFrame  # index: raw sample ids; columns: feature names (may repeat); float64
    sources: list[str]
    orientation: str = "samples_x_genes"
    failures: list[dict] = field(default_factory=list)  # each with "sample" when a sample is known
    notes: list[str] = field(default_factory=list)
    row_lines: dict[str, int] = field(default_factory=dict)  # file row id (gene or sample) -> 1-based line

    def line_of(self, sample: str, feature: str) -> int | None:
        """The file line holding the value of (sample, feature); None for Parquet and STAR input."""
        return self.row_lines.get(feature if self.orientation == "genes_x_samples" else sample)


def _fraction(ids, test) -> float:
    ids = [str(i) for i in ids]
    return sum(1 for i in ids if test(i)) / len(ids) if ids else 0.0


def detect_orientation(row_ids, col_ids, *, known_ids=frozenset(), path: str = "",
                       field_name: str = "expression.orientation") -> str:
    """``genes_x_samples`` or ``samples_x_genes`` from the identifiers (see the module docstring)."""
    known = {str(k).strip() for k in known_ids}

    def sample_like(i: str) -> bool:
        return is_barcode(i) or i.strip() in known

    def gene_like(i: str) -> bool:
        return bool(ENSEMBL.match(i.strip()))

    rows, cols = _fraction(row_ids, sample_like), _fraction(col_ids, sample_like)
    if cols >= 0.5 and rows < 0.1:
        return "genes_x_samples"
    if rows >= 0.5 and cols < 0.1:
        return "samples_x_genes"
    g_rows, g_cols = _fraction(row_ids, gene_like), _fraction(col_ids, gene_like)
    if g_rows >= 0.9 and g_cols < 0.1:
        return "genes_x_samples"
    if g_cols >= 0.9 and g_rows < 0.1:
        return "samples_x_genes"
    ex_rows, ex_cols = [str(i) for i in list(row_ids)[:3]], [str(i) for i in list(col_ids)[:3]]
    raise CohortError(
        f"{path}: cannot tell whether rows or columns are the samples: {cols:.0%} of the column names "
        f"and {rows:.0%} of the row names look like sample ids (TCGA barcodes or clinical patient "
        f"ids), and neither side is Ensembl gene ids (rows e.g. {ex_rows}, columns e.g. {ex_cols}); "
        f"set {field_name}: genes_x_samples or samples_x_genes in cohort.yaml")


def read_matrix(path: str, *, fmt: str = "auto", orientation: str = "auto", known_ids=frozenset(),
                what: str = "expression") -> Matrix:
    """Read one matrix file as samples x features (float64); see the module docstring."""
    if orientation not in ORIENTATIONS:
        raise CohortError(f"{what}.orientation must be one of {ORIENTATIONS}, got {orientation!r}")
    if fmt == "parquet" or (fmt == "auto" and str(path).lower().endswith((".parquet", ".pq"))):
        frame, lines = _read_parquet(path, what=what), None
        bad_rows: list[tuple[int, str]] = []
        sep = ""
    else:
        frame, lines, bad_rows, sep = _read_delimited(path, fmt=fmt, what=what)
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise CohortError(f"the {what} file {path} holds no values (read {frame.shape[0]} rows x "
                          f"{frame.shape[1]} columns)")
    if orientation == "auto":
        orientation = detect_orientation(frame.index, frame.columns, known_ids=known_ids, path=path,
                                         field_name=f"{what}.orientation")
    samples_in_columns = orientation == "genes_x_samples"
    out = Matrix(values=frame, sources=[path], orientation=orientation)
    if lines is not None:
        out.row_lines = {}
        for rid, ln in zip(frame.index.astype(str).str.strip(), lines.tolist()):
            out.row_lines.setdefault(rid, int(ln))
    _drop_annotations(out, samples_in_columns=samples_in_columns, path=path)
    _coerce(out, lines=lines, samples_in_columns=samples_in_columns, path=path)
    for line_no, text in bad_rows:
        fields = text.split(sep)
        row_id = fields[0].strip().strip('"')
        reason = (f"{len(fields)} of {frame.shape[1] + 1} fields; row "
                  f"{'(gene ' + row_id + ')' if samples_in_columns else '(sample ' + row_id + ')'} dropped")
        extra = {} if samples_in_columns else {"sample": row_id}
        out.failures.append(row_failure(path=path, line=line_no, reason=f"{file_name(path)} line {line_no}: {reason}",
                                        **extra))
    values = out.values.T if samples_in_columns else out.values
    values.index = values.index.astype(str).str.strip()
    values.columns = values.columns.astype(str).str.strip()
    values.index.name, values.columns.name = "sample_id", None
    out.values = values.astype(np.float64)
    return out


def _read_delimited(path: str, *, fmt: str, what: str):
    text = read_text(path, what=what)
    first = next((ln for ln in text.split("\n", 50) if ln.strip() and not ln.startswith("#")), "")
    sep = {"csv": ",", "tsv": "\t"}.get(fmt) or guess_sep(path, first)
    scan = scan_lines(text, sep)
    if len(scan.header) < 2:
        raise CohortError(f"the {what} file {path} has {len(scan.header)} column(s) with separator "
                          f"{sep!r}; expected an id column plus value columns")
    try:
        frame = pd.read_csv(io.StringIO(text), sep=sep, skiprows=sorted([*scan.skip, scan.header_index]),
                            header=None, index_col=0, dtype={0: str}, na_values=sorted(NA_TOKENS),
                            keep_default_na=False, skip_blank_lines=False, low_memory=False,
                            quoting=csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL)
    except (ValueError, pd.errors.ParserError) as e:
        raise CohortError(f"cannot parse the {what} file {path}: {e}") from e
    if len(frame) != len(scan.kept):
        raise CohortError(f"cannot parse the {what} file {path}: read {len(frame)} rows, expected "
                          f"{len(scan.kept)}; check its separator and quoting")
    frame.columns = scan.header[1:]
    frame.index.name = scan.header[0] or None
    return frame, np.asarray(scan.kept, dtype=np.int64), scan.bad, sep


def _read_parquet(path: str, *, what: str) -> pd.DataFrame:
    import pyarrow.parquet as pq

    try:
        with uri.open_input(path) as f:
            table = pq.read_table(f)
    except FileNotFoundError as e:
        raise CohortError(f"{what} file not found: {path}; fix the path in cohort.yaml") from e
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise CohortError(f"cannot read the {what} Parquet file {path}: {e}") from e
    frame = table.to_pandas()
    if isinstance(frame.index, pd.RangeIndex):  # no index stored: the first column holds the ids
        first = frame.columns[0]
        if pd.api.types.is_numeric_dtype(frame[first]):
            raise CohortError(f"the {what} Parquet file {path} has no id column: its first column "
                              f"{first!r} is numeric; store gene or sample ids as the first (text) "
                              f"column or as the DataFrame index")
        frame = frame.set_index(first)
    frame.index = frame.index.astype(str)
    frame.columns = [str(c) for c in frame.columns]
    return frame


def _drop_annotations(m: Matrix, *, samples_in_columns: bool, path: str) -> None:
    frame = m.values
    if samples_in_columns:
        annot = [c for c in frame.columns if str(c).strip().lower() in GENE_ANNOTATIONS]
    else:
        annot = []
    text_only = []
    for c in frame.columns:
        col = frame[c]
        if c in annot or isinstance(col, pd.DataFrame) or pd.api.types.is_numeric_dtype(col):
            continue
        nums, bad = numeric_cells(col)
        if bad.any() and nums.notna().sum() == 0:
            text_only.append(c)
    dropped = list(dict.fromkeys(annot + text_only))
    if dropped:
        m.values = frame.drop(columns=dropped)
        m.notes.append(f"{file_name(path)}: column(s) {dropped[:6]}{' ...' if len(dropped) > 6 else ''} "
                       f"hold annotations, not {'samples' if samples_in_columns else 'features'}; dropped")


def _coerce(m: Matrix, *, lines, samples_in_columns: bool, path: str) -> None:
    """Non-numeric cells -> NaN, each reported with file, line (or row), column and value."""
    frame = m.values
    row_ids = frame.index.astype(str)
    for j, c in enumerate(frame.columns):
        col = frame.iloc[:, j]
        if pd.api.types.is_numeric_dtype(col):
            continue
        nums, bad = numeric_cells(col)
        for i in np.flatnonzero(bad):
            line = int(lines[i]) if lines is not None else None
            extra = {} if lines is not None else {"row": int(i) + 1}
            sample = str(c) if samples_in_columns else row_ids[i]
            feature = row_ids[i] if samples_in_columns else str(c)
            m.failures.append(cell_failure(path=path, line=line, column=str(c), value=col.iloc[i],
                                           reason=f"{col.iloc[i]!r} is not a number (feature {feature}); "
                                                  f"the value is treated as missing",
                                           sample=sample, feature=feature, **extra))
        frame.isetitem(j, nums.to_numpy())
    m.values = frame
