"""GDC STAR-counts files (``*.rna_seq.augmented_star_gene_counts.tsv``), one per sample.

Each file looks like::

    # gene-model: GENCODE v36
    gene_id  gene_name  gene_type  unstranded  stranded_first  stranded_second  tpm_unstranded  ...
    N_unmapped  ...                 (STAR's QC counts: N_unmapped, N_multimapping, N_noFeature, N_ambiguous)
    ENSG00000000003.15  TSPAN6  protein_coding  3046  1530  1516  40.7  ...

(the columns after ``tpm_unstranded``: ``fpkm_unstranded``, ``fpkm_uq_unstranded``).

The files do not name their sample: a GDC *sample sheet* (the TSV the GDC
portal exports, columns ``File Name`` and ``Sample ID``) maps each file to its
sample barcode.  ``expression.path`` may be

* a folder of STAR-counts files (searched recursively, as gdc-client lays them
  out, one sub-folder per file UUID) holding the sample sheet, or with the
  sheet given as ``tables.expression.sample_sheet``;
* the sample sheet itself: the files are looked up by name under its folder;
* one STAR-counts file (its sample id from the sample sheet).

The QC rows are skipped; genes are aligned on ``gene_id`` across files and
named by ``gene_name`` (default) or ``gene_id``.  A file that cannot be read
is one failed sample; the others go on.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from mmray import uri
from mmray.errors import CohortError
from mmray.features.omics_io import Matrix
from mmray.features.table_io import cell_failure, file_name, numeric_cells, read_text_table, row_failure

VALUE_COLUMNS = ("unstranded", "stranded_first", "stranded_second", "tpm_unstranded", "fpkm_unstranded",
                 "fpkm_uq_unstranded")
COLUMNS = ("gene_id", "gene_name", "gene_type") + VALUE_COLUMNS
HEADER_MARK = "# gene-model:"
SHEET_FILE, SHEET_SAMPLE = "File Name", "Sample ID"


def _head(path: str, n_bytes: int = 4096) -> str:
    fs, inner = uri.filesystem(path)
    with fs.open_input_stream(inner) as f:
        return f.read(n_bytes).decode("utf-8", errors="replace")


def is_dir(path: str) -> bool:
    fs, inner = uri.filesystem(path)
    return fs.get_file_info(inner).type == pafs.FileType.Directory


def is_star_file(path: str) -> bool:
    return _head(path, 256).lstrip().startswith(HEADER_MARK)


def is_sample_sheet(path: str) -> bool:
    first = _head(path).split("\n", 1)[0]
    return SHEET_FILE in first and SHEET_SAMPLE in first


def is_star_input(path: str) -> bool:
    """Whether ``path`` is a STAR-counts folder, file or sample sheet (not a plain matrix)."""
    try:
        return is_dir(path) or is_star_file(path) or is_sample_sheet(path)
    except OSError:
        return False


def read_sample_sheet(path: str) -> dict[str, str]:
    """``{file name: sample id}`` from a GDC sample sheet (first id when a cell lists several)."""
    table = read_text_table(path, what="sample sheet")
    missing = [c for c in (SHEET_FILE, SHEET_SAMPLE) if c not in table.header]
    if missing:
        raise CohortError(f"sample sheet {path} lacks column(s) {missing}; a GDC sample sheet has "
                          f"'File Name' and 'Sample ID' (found: {table.header})")
    return {str(f).strip(): str(s).split(",")[0].strip()
            for f, s in zip(table.frame[SHEET_FILE], table.frame[SHEET_SAMPLE]) if str(f).strip()}


def read_star_file(path: str, *, value: str = "tpm_unstranded") -> tuple[pd.DataFrame, list[dict], dict]:
    """One file -> ``(frame gene_id, gene_name, gene_type, value; failures; QC counts)``."""
    if value not in VALUE_COLUMNS:
        raise CohortError(f"tables.expression.star_value must be one of {VALUE_COLUMNS}, got {value!r}")
    table = read_text_table(path, what="STAR counts", sep="\t")
    missing = [c for c in COLUMNS if c not in table.header]
    if missing:
        raise CohortError(f"{file_name(path)} is not a GDC STAR-counts file: it lacks column(s) {missing} "
                          f"(found: {table.header})")
    frame = table.frame
    qc_mask = frame["gene_id"].str.startswith("N_").to_numpy()
    qc_counts, _ = numeric_cells(frame.loc[qc_mask, "unstranded"])
    qc = {g: (None if np.isnan(v) else int(v)) for g, v in zip(frame.loc[qc_mask, "gene_id"], qc_counts)}
    genes = frame.loc[~qc_mask].reset_index(drop=True)
    lines = table.lines[~qc_mask]
    nums, bad = numeric_cells(genes[value])
    failures = [cell_failure(path=path, line=int(lines[i]), column=value, value=genes[value].iloc[i],
                             reason=f"{genes[value].iloc[i]!r} is not a number (gene {genes['gene_id'].iloc[i]}); "
                                    f"treated as missing", feature=genes["gene_id"].iloc[i])
                for i in bad.nonzero()[0]]
    failures += [row_failure(path=path, line=r["line"], reason=table.bad_row_reason(r)) for r in table.bad_rows]
    out = pd.DataFrame({"gene_id": genes["gene_id"].str.strip(), "gene_name": genes["gene_name"].str.strip(),
                        "gene_type": genes["gene_type"].str.strip(), "value": nums.to_numpy()})
    return out, failures, qc


def _star_files(folder: str) -> list[str]:
    return [f for f in uri.list_files(folder) if f.endswith((".tsv", ".txt")) and is_star_file(f)]


def _find_sheet(folder: str) -> str | None:
    cands = [f for f in uri.list_files(folder)
             if "sample_sheet" in file_name(f).lower() and not is_star_file(f) and is_sample_sheet(f)]
    return min(cands) if cands else None


def read_star_counts(path: str, *, sample_sheet: str | None = None, value: str = "tpm_unstranded",
                     gene_id: str = "gene_name", gene_types: tuple[str, ...] = ()) -> Matrix:
    """Samples x genes from STAR-counts files (see the module docstring)."""
    if gene_id not in ("gene_name", "gene_id"):
        raise CohortError(f"tables.expression.star_gene_id must be 'gene_name' or 'gene_id', got {gene_id!r}")
    if is_dir(path):
        files, sheet = _star_files(path), sample_sheet or _find_sheet(path)
    elif is_star_file(path):
        files, sheet = [path], sample_sheet
    else:  # the sample sheet itself
        files, sheet = _star_files(uri.parent(path)), path
    if not files:
        raise CohortError(f"no GDC STAR-counts files (first line '{HEADER_MARK} ...') found at {path}")
    if sheet is None:
        raise CohortError(f"STAR-counts files at {path} name no sample: give the GDC sample sheet (columns "
                          f"'File Name', 'Sample ID') as tables.expression.sample_sheet, or put it in the "
                          f"folder with 'sample_sheet' in its name")
    mapping = read_sample_sheet(sheet)
    out = Matrix(values=pd.DataFrame(), sources=[sheet], orientation="star_counts")
    columns: dict[str, pd.Series] = {}
    names: dict[str, str] = {}
    for f in sorted(files):
        sample = mapping.get(file_name(f))
        if sample is None:
            out.failures.append({"item": file_name(f), "patient_id": None, "file": file_name(f),
                                 "reason": f"{file_name(f)} is not listed in the sample sheet {file_name(sheet)}; "
                                           f"file skipped (add it to the sheet)"})
            continue
        try:
            frame, failures, _qc = read_star_file(f, value=value)
        except CohortError as e:
            out.failures.append({"item": file_name(f), "patient_id": None, "file": file_name(f),
                                 "sample": sample, "reason": f"{e}; sample skipped"})
            continue
        for fail in failures:
            fail["sample"] = sample
        out.failures += failures
        if gene_types:
            frame = frame[frame["gene_type"].isin(gene_types)]
        if sample in columns:
            out.notes.append(f"sample {sample} has several STAR-counts files; kept the first ({file_name(f)} "
                             f"left out)")
            continue
        frame = frame.drop_duplicates("gene_id")
        columns[sample] = pd.Series(frame["value"].to_numpy(), index=frame["gene_id"].to_numpy())
        names.update(zip(frame["gene_id"], frame["gene_name"]))
        out.sources.append(f)
    if not columns:
        raise CohortError(f"none of the STAR-counts files at {path} could be read; see the failures")
    values = pd.DataFrame(columns).T  # samples x gene_id, aligned on gene_id
    if gene_id == "gene_name":
        values.columns = [names.get(g) or g for g in values.columns]
    values.index.name = "sample_id"
    out.values = values.astype("float64")
    unlisted = sorted(set(mapping) - {file_name(f) for f in files})
    if unlisted:
        out.notes.append(f"{len(unlisted)} file(s) of the sample sheet were not found under {path}, "
                         f"e.g. {unlisted[:3]}")
    return out
