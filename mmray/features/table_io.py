"""Reading delimited tables so that a bad row costs that row, not the file.

:func:`read_text_table` reads a CSV/TSV (local or ``s3://``) into text cells
and keeps each row's 1-based line number (the header line counts, ``#``
comment lines too), so every problem can name file, line, column and value.
Rows with the wrong number of fields are *dropped* and returned in
:attr:`TextTable.bad_rows` (their fields may be shifted, so no cell of them is
trusted); cells that fail a later numeric check become missing and are
reported by :func:`numeric_cells`.

Failure records (what the ingesters put in the store's failures table) are
dicts ``{item, patient_id, reason, file, line, column, value}``; ``item`` is
``<file>:<line>``.
"""

from __future__ import annotations

import csv
import io
import posixpath
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mmray import uri
from mmray.errors import CohortError

# Cells read as missing in numeric columns (besides the empty cell).
NA_TOKENS = frozenset({"", "NA", "N/A", "NaN", "nan", "NULL", "null", "None", "-", "--", "."})


def file_name(path: str) -> str:
    return posixpath.basename(str(path).rstrip("/")) or str(path)


def guess_sep(path: str, first_line: str) -> str:
    name = str(path).lower()
    if name.endswith((".csv", ".csv.gz")):
        return ","
    if name.endswith((".tsv", ".maf", ".txt", ".tab", ".gmt")):
        return "\t"
    return "\t" if first_line.count("\t") >= first_line.count(",") else ","


def read_text(path: str, *, what: str) -> str:
    """A whole text file (local or ``s3://``); CohortError naming it when unreadable."""
    try:
        data = uri.read_bytes(path)
    except FileNotFoundError as e:
        raise CohortError(f"{what} file not found: {path}; fix the path in cohort.yaml") from e
    except OSError as e:
        raise CohortError(f"cannot read the {what} file {path}: {e}") from e
    if str(path).endswith(".gz"):
        import gzip

        data = gzip.decompress(data)
    return data.decode("utf-8-sig", errors="replace")


@dataclass
class TextTable:
    """A table read as text: ``frame`` cells are strings ('' for empty)."""

    path: str
    header: list[str]
    frame: pd.DataFrame
    lines: np.ndarray  # 1-based line number of each frame row
    bad_rows: list[dict] = field(default_factory=list)  # {line, n_fields, fields: {col: value}}
    unit: str = "line"  # "row" for Parquet: ``lines`` then holds 1-based row numbers

    @property
    def name(self) -> str:
        return file_name(self.path)

    def failure(self, i: int, *, column: str, value, reason: str, **extra) -> dict:
        """A failure record for cell (frame row ``i``, ``column``)."""
        n = int(self.lines[i])
        if self.unit == "row":
            return cell_failure(path=self.path, line=None, row=n, column=column, value=value, reason=reason,
                                **extra)
        return cell_failure(path=self.path, line=n, column=column, value=value, reason=reason, **extra)

    def bad_row_reason(self, row: dict) -> str:
        n, expected = row["n_fields"], len(self.header)
        lost = self.header[n:] if n < expected else []
        extra = f" (missing {', '.join(lost[:4])}{' ...' if len(lost) > 4 else ''})" if lost else ""
        return f"{self.name} line {row['line']}: {n} of {expected} fields{extra}; row dropped"


@dataclass
class LineScan:
    """Where the header and the data rows of a delimited text are."""

    header: list[str]
    header_index: int  # 0-based index of the header line
    skip: list[int]  # 0-based indices of blank, comment and bad lines (header excluded)
    kept: list[int]  # 1-based line numbers of the good data rows, in order
    bad: list[tuple[int, str]]  # (1-based line number, text) of rows with the wrong field count


def scan_lines(text: str, sep: str) -> LineScan:
    """Find header, comment/blank lines and rows whose field count differs from the header's.

    ``#`` lines are comments before the header, and anywhere in a TSV (no
    MAF, GMT or matrix data line starts with ``#``).
    """
    raw_lines = text.split("\n")
    if raw_lines and raw_lines[-1] == "":
        raw_lines.pop()
    header: list[str] | None = None
    header_index = -1
    skip, kept, bad = [], [], []
    expected = 0
    for i, line in enumerate(raw_lines):
        s = line.rstrip("\r")
        if not s.strip() or (s.startswith("#") and (header is None or sep == "\t")):
            skip.append(i)
            continue
        n = s.count(sep) + 1
        if header is None:
            header = [h.strip().strip('"') if sep == "," else h.strip() for h in s.split(sep)]
            header_index, expected = i, n
            continue
        if n != expected:
            skip.append(i)
            bad.append((i + 1, s))
            continue
        kept.append(i + 1)
    return LineScan(header=header or [], header_index=header_index, skip=skip, kept=kept, bad=bad)


def read_text_table(path: str, *, what: str, sep: str | None = None,
                    usecols: list[str] | None = None) -> TextTable:
    """Read a CSV/TSV as text (see the module docstring); ``usecols`` keeps only those columns."""
    text = read_text(path, what=what)
    first = next((ln for ln in text.split("\n", 50) if ln.strip() and not ln.startswith("#")), "")
    sep = sep or guess_sep(path, first)
    if sep == "," and '"' in text:
        return _read_quoted_csv(path, text, usecols=usecols, what=what)
    scan = scan_lines(text, sep)
    header, skip, kept, bad = scan.header, scan.skip, scan.kept, scan.bad
    if not header:
        raise CohortError(f"the {what} file {path} is empty (no header line)")
    _check_header(header, path=path, what=what)
    cols = [c for c in header if usecols is None or c in usecols]
    try:
        frame = pd.read_csv(io.StringIO(text), sep=sep, skiprows=sorted([*skip, scan.header_index]),
                            header=None, names=header, dtype=str,
                            keep_default_na=False, na_filter=False, usecols=cols,
                            quoting=csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL,
                            skip_blank_lines=False, engine="c")
    except (ValueError, pd.errors.ParserError) as e:
        raise CohortError(f"cannot parse the {what} file {path}: {e}") from e
    frame = frame[cols]
    if len(frame) != len(kept):  # defensive: the scan and the parser must agree row for row
        raise CohortError(f"cannot parse the {what} file {path}: read {len(frame)} rows, expected "
                          f"{len(kept)}; check its separator and quoting")
    bad_rows = [_bad_row(header, line_no, s.split(sep)) for line_no, s in bad]
    return TextTable(path=path, header=header, frame=frame, lines=np.asarray(kept, dtype=np.int64),
                     bad_rows=bad_rows)


def _read_quoted_csv(path: str, text: str, *, usecols, what: str) -> TextTable:
    """Quoted CSV (fields may hold commas or newlines): the csv module, record by record."""
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    rows, kept, bad = [], [], []
    start = 1
    for rec in reader:
        line_no, start = start, reader.line_num + 1
        if not rec or not any(f.strip() for f in rec) or (header is None and rec[0].startswith("#")):
            continue
        if header is None:
            header = rec
            continue
        if len(rec) != len(header):
            bad.append(_bad_row(header, line_no, rec))
            continue
        rows.append(rec)
        kept.append(line_no)
    if not header:
        raise CohortError(f"the {what} file {path} is empty (no header line)")
    _check_header(header, path=path, what=what)
    frame = pd.DataFrame(rows, columns=header, dtype=object) if rows else pd.DataFrame(columns=header)
    cols = [c for c in header if usecols is None or c in usecols]
    return TextTable(path=path, header=header, frame=frame[cols].astype(object),
                     lines=np.asarray(kept, dtype=np.int64), bad_rows=bad)


def _bad_row(header: list[str], line_no: int, fields: list[str]) -> dict:
    return {"line": line_no, "n_fields": len(fields), "fields": dict(zip(header, fields))}


def _check_header(header: list[str], *, path: str, what: str) -> None:
    seen, dup = set(), []
    for h in header:
        if h in seen:
            dup.append(h)
        seen.add(h)
    if dup:
        raise CohortError(f"the {what} file {path} repeats column name(s) {sorted(set(dup))} in its "
                          f"header; rename them so each column is unique")


def numeric_cells(values: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Text cells -> float; returns ``(numbers, bad mask)`` (bad: not a number, not an NA token)."""
    text = values.astype(str).str.strip()
    na = text.isin(NA_TOKENS)
    numbers = pd.to_numeric(text.where(~na), errors="coerce")
    bad = numbers.isna().to_numpy() & ~na.to_numpy()
    return numbers.astype(float), bad


def cell_failure(*, path: str, line: int | None, column: str, value, reason: str,
                 patient_id: str | None = None, **extra) -> dict:
    """A failure record for one cell (``line`` None for Parquet: give ``row=`` instead)."""
    name = file_name(path)
    row = extra.pop("row", None)
    if line is not None:
        where, item = f"{name} line {line}", f"{name}:{line}"
    elif row is not None:
        where, item, extra["row"] = f"{name} row {row}", f"{name}:{row}", row
    else:
        where, item = name, f"{name}:{column}"
    return {"item": item, "patient_id": patient_id, "reason": f"{where}, column {column!r}: {reason}", "file": name,
            "line": line, "column": column, "value": None if value is None else str(value), **extra}


def row_failure(*, path: str, line: int, reason: str, patient_id: str | None = None, **extra) -> dict:
    """A failure record for a whole row (``reason`` already names file and line)."""
    return {"item": f"{file_name(path)}:{line}", "patient_id": patient_id, "reason": reason,
            "file": file_name(path), "line": line, "column": extra.pop("column", None),
            "value": extra.pop("value", None), **extra}


def read_parquet_as_text(path: str, *, what: str) -> TextTable:
    """A Parquet table as text cells ('' for null), rows numbered from 1."""
    import pyarrow.parquet as pq

    try:
        with uri.open_input(path) as f:
            frame = pq.read_table(f).to_pandas()
    except FileNotFoundError as e:
        raise CohortError(f"{what} file not found: {path}; fix the path in cohort.yaml") from e
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise CohortError(f"cannot read the {what} Parquet file {path}: {e}") from e
    frame = frame.reset_index(drop=isinstance(frame.index, pd.RangeIndex))
    text = frame.astype(object).where(frame.notna(), "").astype(str)
    text.columns = [str(c) for c in text.columns]
    return TextTable(path=path, header=list(text.columns), frame=text,
                     lines=np.arange(1, len(text) + 1, dtype=np.int64), unit="row")


def read_any_table(path: str, *, what: str, fmt: str = "auto") -> TextTable:
    """CSV, TSV or Parquet (by ``fmt`` or the extension) as text cells."""
    if fmt == "parquet" or (fmt == "auto" and str(path).lower().endswith((".parquet", ".pq"))):
        return read_parquet_as_text(path, what=what)
    return read_text_table(path, what=what, sep={"csv": ",", "tsv": "\t"}.get(fmt))
