"""Labels from the clinical table: survival time and event, subtype, prediction time.

Validated once, here, like scikit-survival's ``check_y_survival`` (training
code re-checks the arrays it gets with ``mmray.train.metrics.check_survival``):

* column-level problems stop the ingest with a :class:`~mmray.errors.CohortError`
  naming file and column: ``event_value`` matching no value of the event
  column, an event column with more than two values, no event at all, no
  usable time;
* row-level problems (a time that is missing, not a number or negative, a
  missing event, a missing or unparseable index date) drop that patient's
  label row and are reported as failures naming file, line, column and
  value; the patient's clinical features are still written.

A missing subtype keeps the row, with ``subtype`` and ``subtype_code`` null;
likewise a missing treatment response (``response``, ``response_code``) or
toxicity (``toxicity_<column>``, Int8 0/1): the other labels stay usable.
Subtype codes: ``subtype_classes`` order when given (others: null, noted),
else the labels sorted as text; the mapping is returned and stored in the
labels group's manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mmray.cohort import LabelsSpec
from mmray.errors import CohortError
from mmray.features.clinical import missing_mask, parse_dates
from mmray.features.table_io import TextTable, numeric_cells
from mmray.store.keys import UNDATED


@dataclass
class Labels:
    frame: pd.DataFrame  # rows of the clinical table kept: event_time, [time_days, event], [subtype, subtype_code]
    subtype_mapping: dict[str, int] = field(default_factory=dict)
    response_mapping: dict[str, int] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def same_value(a: str, b: str) -> bool:
    """Text equality, with numbers compared as numbers (``1`` == ``1.0``)."""
    a, b = str(a).strip(), str(b).strip()
    if a == b:
        return True
    try:
        return float(a) == float(b)
    except ValueError:
        return False


def coded_labels(cells: pd.Series, *, classes, missing_values, notes: list[str], what: str, classes_key: str,
                 column: str) -> tuple[pd.Series, pd.arrays.IntegerArray, dict[str, int]]:
    """A categorical label as ``(text, Int64 class index, {class: index})``: classes in ``classes`` order when
    given (other values become null, noted), else the present values sorted as text; missing cells null."""
    raw = cells.astype(str).str.strip()
    present = ~missing_mask(raw, missing_values)
    mapping = {c: k for k, c in enumerate(list(classes) or sorted(raw[present].unique()))}
    unknown = present & ~raw.isin(mapping).to_numpy()
    if unknown.any():
        notes.append(f"{int(unknown.sum())} {what} value(s) not in {classes_key} "
                     f"({sorted(set(raw[unknown]))[:5]}): {what} left null")
    if (~present).any():
        notes.append(f"{int((~present).sum())} patient(s) have no {what} ({column!r} missing)")
    ok = present & ~unknown
    text = pd.Series(np.where(ok, raw, None), index=cells.index, dtype=object)
    codes = pd.array([mapping[v] if k else None for v, k in zip(raw, ok)], dtype="Int64")
    return text, codes, mapping


def build_labels(table: TextTable, *, spec: LabelsSpec, missing_values, subtype_classes=()) -> Labels:
    """Label columns of ``table`` -> :class:`Labels` (see the module docstring)."""
    frame = table.frame
    n = len(frame)
    out = pd.DataFrame(index=frame.index)
    keep = np.ones(n, dtype=bool)
    labels = Labels(frame=out)
    fail = labels.failures

    if spec.index_date:
        raw = frame[spec.index_date].astype(str)
        dates = parse_dates(raw.where(~missing_mask(raw, missing_values), ""))
        for i in np.flatnonzero(dates.isna().to_numpy()):
            fail.append(table.failure(i, column=spec.index_date, value=raw.iloc[i],
                                      reason=f"index date {raw.iloc[i]!r} is missing or not a date; the "
                                             f"patient's label row is dropped"))
            keep[i] = False
        out["event_time"] = dates
    else:
        out["event_time"] = pd.Series([UNDATED] * n, index=frame.index)

    if spec.time_days:
        col, ev_col = spec.time_days, spec.event
        raw_t = frame[col].astype(str)
        present = ~missing_mask(raw_t, missing_values)
        times, bad = numeric_cells(raw_t.where(present, ""))
        for i in range(n):
            why = None
            if bad[i]:
                why = f"{raw_t.iloc[i]!r} is not a number"
            elif not present[i] or np.isnan(times.iloc[i]):
                why = "the survival time is missing"
            elif times.iloc[i] < 0:
                why = f"negative survival time {times.iloc[i]:g}"
            if why:
                fail.append(table.failure(i, column=col, value=raw_t.iloc[i],
                                          reason=f"{why} (label); the patient's label row is dropped"))
                keep[i] = False
        raw_e = frame[ev_col].astype(str).str.strip()
        e_present = ~missing_mask(raw_e, missing_values)
        _check_event_column(raw_e[e_present], table=table, column=ev_col, event_value=spec.event_value)
        for i in np.flatnonzero(~e_present):
            fail.append(table.failure(i, column=ev_col, value=raw_e.iloc[i],
                                      reason="the event indicator is missing (label); the patient's label "
                                             "row is dropped"))
            keep[i] = False
        if not (times[keep].notna()).any():
            raise CohortError(f"{table.name}: no usable survival time in column {col!r} (labels.time_days); "
                              f"check the column")
        zero = keep & (times.to_numpy() == 0)
        if zero.any():
            labels.notes.append(f"{int(zero.sum())} patient(s) have {col} = 0 (event or censoring on the index "
                                f"date); survival models that need times > 0 will refuse them")
        out["time_days"] = times.to_numpy(dtype=np.float64)
        out["event"] = np.array([1 if same_value(v, spec.event_value) else 0 for v in raw_e], dtype=np.int8)

    if spec.subtype:
        out["subtype"], out["subtype_code"], labels.subtype_mapping = coded_labels(
            frame[spec.subtype], classes=subtype_classes, missing_values=missing_values, notes=labels.notes,
            what="subtype", classes_key="tables.clinical.subtype_classes", column=spec.subtype)
    if spec.response or spec.toxicity:
        from mmray.features.labels_treatment import treatment_labels

        treatment_labels(frame, out, spec=spec, missing_values=missing_values, labels=labels, table=table)
    labels.frame = out[keep]
    return labels


def _check_event_column(values: pd.Series, *, table: TextTable, column: str, event_value: str) -> None:
    counts = values.value_counts()
    where = f"{table.name}, column {column!r} (labels.event)"
    if counts.empty:
        raise CohortError(f"{where}: every value is missing; the event column must say whether the event happened")
    shown = ", ".join(f"{v!r} ({c} rows)" for v, c in counts.items())
    if not any(same_value(v, event_value) for v in counts.index):
        raise CohortError(f"{where}: labels.event_value {event_value!r} matches no value; the column holds "
                          f"{shown}; set labels.event_value to the value that means the event happened")
    if len(counts) > 2:
        others = [v for v in counts.index if not same_value(v, event_value)]
        rows = [int(table.lines[i]) for i in values.index[values.isin(others[1:]).to_numpy()]][:10]
        raise CohortError(f"{where}: {len(counts)} different values ({shown}); expected two, the event value "
                          f"{event_value!r} and one censoring value (e.g. lines {rows} hold the extra ones); "
                          f"map the extra values to one of the two, or list them in tables.clinical.missing_values")
