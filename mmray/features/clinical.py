"""Clinical table -> encoded features (the reference transforms, all configurable).

Per column, in this order (:func:`encode_clinical`):

1. the id column and the label columns are never features; named leaking
   columns (``leaking_columns``: outcome information recorded after the
   prediction time, e.g. ``cause_of_death``) and ``drop_columns`` go; date
   columns go (``drop_dates``);
2. the missing tokens (``missing_values``: ``Not Collected``, ``not reported``,
   ``[Not Available]``, empty, ...) become missing, case-insensitively;
3. each remaining column is ``numeric`` (most cells are numbers: floats; the
   few that are not are reported as malformed cells and become missing),
   ``ordinal`` (``ordinal_columns``: given order -> 0..k-1), ``categorical``
   (``categorical_columns``, or text with at most ``max_categories`` levels:
   one-hot ``<col>=<level>``) or free text (more levels: dropped, noted);
4. missing values stay NaN and, when a column has any, a ``<col>__missing``
   0/1 indicator column is added (``missing_indicators``).  The fill value
   is fitted per training fold later (:class:`FoldImputer`), never here.

Rows whose value in a ``drop_not_collected_in`` column is one of
``not_collected`` (default ``Not Collected``) are dropped first
(:func:`drop_not_collected`), with a note.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from mmray.errors import DataError
from mmray.features.table_io import TextTable, numeric_cells

DEFAULT_MISSING = ("", "NA", "N/A", "NaN", "null", "None", "--", "'--", "Not Collected", "not reported",
                   "Not Available", "[Not Available]", "[Not Applicable]", "[Not Evaluated]", "[Unknown]",
                   "[Discrepancy]", "[Not Reported]")
# Outcome columns of common exports (GDC, TCGA, TCIA) recorded after diagnosis.
DEFAULT_LEAKING = ("cause_of_death", "followup_status_code", "date_of_death", "date_of_last_contact",
                   "days_to_death", "days_to_last_follow_up", "death_days_to", "last_contact_days_to",
                   "vital_status", "tumor_status", "person_neoplasm_cancer_status", "followup_status",
                   "recurrence_status", "days_to_recurrence", "date_of_recurrence")
_DATE = re.compile(r"^\d{4}-\d{1,2}-\d{1,2}([ T].*)?$|^\d{1,2}/\d{1,2}/\d{4}$")


@dataclass(frozen=True)
class ClinicalConfig:
    """The ``tables.clinical`` section (see the module docstring)."""

    missing_values: tuple[str, ...] = DEFAULT_MISSING
    not_collected: tuple[str, ...] = ("Not Collected",)
    drop_not_collected_in: tuple[str, ...] = ()
    leaking_columns: tuple[str, ...] = DEFAULT_LEAKING
    drop_columns: tuple[str, ...] = ()
    drop_dates: bool = True
    categorical_columns: tuple[str, ...] = ()
    ordinal_columns: dict[str, tuple[str, ...]] = field(default_factory=dict)
    max_categories: int = 30
    missing_indicators: bool = True
    subtype_classes: tuple[str, ...] = ()  # order of subtype codes; default: labels sorted

    def validate(self):
        if self.max_categories < 2:
            yield ("max_categories", f"must be at least 2, got {self.max_categories}")
        for col, levels in self.ordinal_columns.items():
            if len(set(levels)) != len(levels) or not levels:
                yield (f"ordinal_columns.{col}", "give the levels in order, each once")


@dataclass
class Encoded:
    features: pd.DataFrame  # index: the table's row order; float32 columns
    kinds: dict[str, str]  # source column -> numeric | ordinal | categorical | date | text | dropped reason
    failures: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    levels: dict[str, list[str]] = field(default_factory=dict)  # one-hot column -> its levels


def missing_mask(values: pd.Series, tokens) -> np.ndarray:
    """Cells that are empty or one of ``tokens`` (case-insensitive, spaces stripped)."""
    lowered = {str(t).strip().lower() for t in tokens} | {"", "nan"}
    return values.astype(str).str.strip().str.lower().isin(lowered).to_numpy()


def is_date_column(name: str, values: pd.Series) -> bool:
    """Every present cell looks like a date (ISO or m/d/Y), or the name says date and most do."""
    text = values[values.astype(str).str.strip() != ""].astype(str).str.strip()
    if text.empty:
        return "date" in name.lower()
    looks = text.str.match(_DATE).mean()
    return looks == 1.0 or ("date" in name.lower() and looks >= 0.5)


def parse_dates(values: pd.Series) -> pd.Series:
    """Text -> UTC timestamps (NaT when empty or unparseable)."""
    return pd.to_datetime(values.astype(str).str.strip().replace("", None), errors="coerce", utc=True,
                          format="mixed")


def drop_not_collected(table: TextTable, cfg: ClinicalConfig) -> tuple[np.ndarray, list[str]]:
    """Boolean keep-mask over rows and notes for ``drop_not_collected_in``."""
    keep = np.ones(len(table.frame), dtype=bool)
    notes = []
    for col in cfg.drop_not_collected_in:
        if col not in table.frame.columns:
            notes.append(f"tables.clinical.drop_not_collected_in names {col!r}, which {table.name} lacks")
            continue
        hit = missing_mask(table.frame[col], cfg.not_collected)
        if hit.any():
            notes.append(f"{int(hit.sum())} row(s) dropped: {col!r} is {'/'.join(cfg.not_collected)}")
        keep &= ~hit
    return keep, notes


def _kind(col: str, values: pd.Series, present: np.ndarray, cfg: ClinicalConfig) -> str:
    if col in cfg.ordinal_columns:
        return "ordinal"
    if col in cfg.categorical_columns:
        return "categorical"
    if is_date_column(col, values.where(present, "")):
        return "date"
    _, bad = numeric_cells(values.where(present, ""))
    n_present = int(present.sum())
    if n_present and (n_present - int(bad.sum())) > n_present / 2:
        return "numeric"
    levels = values[present].astype(str).str.strip().nunique()
    return "categorical" if levels <= cfg.max_categories else "text"


def encode_clinical(table: TextTable, *, cfg: ClinicalConfig, exclude: dict[str, str]) -> Encoded:
    """Encode every column of ``table`` (see the module docstring).

    ``exclude``: column -> why it is not a feature (id, label columns).
    """
    frame = table.frame
    out: dict[str, np.ndarray] = {}
    enc = Encoded(features=pd.DataFrame(index=frame.index), kinds={})
    leaking, dropped = set(cfg.leaking_columns), set(cfg.drop_columns)
    for col in frame.columns:
        if col in exclude:
            enc.kinds[col] = exclude[col]
            continue
        if col in leaking or col in dropped:
            enc.kinds[col] = "leaking (tables.clinical.leaking_columns)" if col in leaking else "dropped (config)"
            continue
        values = frame[col].astype(str)
        present = ~missing_mask(values, cfg.missing_values)
        kind = _kind(col, values, present, cfg)
        enc.kinds[col] = kind
        missing = ~present
        if kind == "date":
            if cfg.drop_dates:
                enc.kinds[col] = "date (dropped: tables.clinical.drop_dates)"
                continue
            days = (parse_dates(values.where(present, "")) - pd.Timestamp("1970-01-01", tz="UTC")).dt.days
            missing = missing | days.isna().to_numpy()
            out[col] = days.to_numpy(dtype=np.float64)
        elif kind == "numeric":
            nums, bad = numeric_cells(values.where(present, ""))
            for i in np.flatnonzero(bad):
                enc.failures.append(table.failure(i, column=col, value=values.iloc[i],
                                                  reason=f"{values.iloc[i]!r} is not a number (the column is "
                                                         f"numeric); treated as missing"))
            missing = missing | bad
            out[col] = nums.to_numpy(dtype=np.float64)
        elif kind == "ordinal":
            order = {str(v).strip().lower(): k for k, v in enumerate(cfg.ordinal_columns[col])}
            codes = values.str.strip().str.lower().map(order)
            unknown = present & codes.isna().to_numpy()
            if unknown.any():
                odd = sorted(set(values[unknown]))
                enc.notes.append(f"{col!r}: value(s) {odd[:5]} not in tables.clinical.ordinal_columns.{col}; "
                                 f"treated as missing")
            missing = missing | unknown
            out[col] = codes.to_numpy(dtype=np.float64)
        elif kind == "categorical":
            text = values.str.strip()
            levels = sorted(text[present].unique())
            enc.levels[col] = levels
            for level in levels:
                onehot = (text == level).to_numpy(dtype=np.float64)
                out[f"{col}={level}"] = np.where(missing, np.nan, onehot)
        else:
            enc.notes.append(f"{col!r} is free text ({values[present].nunique()} distinct values > "
                             f"tables.clinical.max_categories={cfg.max_categories}); not a feature")
            continue
        if kind != "categorical":
            out[col] = np.where(missing, np.nan, out[col])
        if cfg.missing_indicators and missing.any():
            out[f"{col}__missing"] = missing.astype(np.float64)
    enc.features = pd.DataFrame(out, index=frame.index).astype(np.float32)
    return enc


class FoldImputer(TransformerMixin, BaseEstimator):
    """Fill NaN with a per-column statistic of the training rows (``median`` or ``mean``).

    The ``<col>__missing`` indicators written at ingest keep the information
    that a value was missing; this only picks the number a model sees there.
    """

    def __init__(self, strategy: str = "median"):
        self.strategy = strategy

    def fit(self, X, y=None):
        if self.strategy not in ("median", "mean"):
            raise DataError(f"FoldImputer: strategy must be 'median' or 'mean', got {self.strategy!r}")
        arr = X.to_numpy(dtype=np.float64) if isinstance(X, pd.DataFrame) else np.asarray(X, dtype=np.float64)
        self.fit_index_ = X.index.copy() if isinstance(X, pd.DataFrame) else None
        self.n_features_in_ = arr.shape[1]
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                stat = np.nanmedian(arr, axis=0) if self.strategy == "median" else np.nanmean(arr, axis=0)
        self.statistics_ = np.nan_to_num(stat, nan=0.0)
        return self

    def transform(self, X):
        arr = X.to_numpy(dtype=np.float64) if isinstance(X, pd.DataFrame) else np.asarray(X, dtype=np.float64)
        filled = np.where(np.isnan(arr), self.statistics_[None, :], arr)
        return pd.DataFrame(filled, index=X.index, columns=X.columns) if isinstance(X, pd.DataFrame) else filled
