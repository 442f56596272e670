"""Target-leakage report: how well each raw clinical column predicts the label on its own.

For every raw column (all but the id and the label columns, leaking-listed
ones included: the report is how you find them), one single-column model is
cross-validated (stratified folds; everything fitted inside the training
fold) and scored out of fold:

* ``auc_event``: ROC AUC for the event (a depth-3 decision tree; for
  numbers and dates also the value itself, its sign chosen on the training
  fold, and the better of the two);
* ``c_index``: Harrell's C for the survival time (a depth-3 survival tree
  from scikit-survival; numbers and dates as for ``auc_event``);
* ``auc_subtype``: one-vs-rest macro ROC AUC for the subtype.

Encoding inside the model: numbers as they are, dates as days since the
patient's index date (since 1970 without one), categories one-hot (the
``max_levels`` most frequent, the rest pooled), plus a missing-value
indicator; NaN is filled with the training fold's median.

Rule-based checks on the whole column:

* ``null_when_no_event``: the column is missing exactly for the patients
  without the event (or exactly for those with it): it was filled in *because*
  of the outcome (``date_of_death``, ``cause_of_death``);
* ``after_index_fraction``: for date columns, the share of dates after the
  patient's index date: information from after the prediction time.

A column is flagged when ``auc_event`` or ``auc_subtype`` >= ``auc_threshold``,
``c_index`` >= ``c_index_threshold``, the null pattern holds, or
``after_index_fraction`` >= ``future_fraction``.  Ordinary prognostic
columns (age, stage) score well below these thresholds.
"""

from __future__ import annotations

import datetime as dt
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mmray.features.clinical import is_date_column, missing_mask, parse_dates
from mmray.features.table_io import numeric_cells
from mmray.report import render


@dataclass(frozen=True)
class LeakageConfig:
    """The ``tables.reports.leakage`` section."""

    enabled: bool = True
    auc_threshold: float = 0.9
    c_index_threshold: float = 0.8
    future_fraction: float = 0.5
    folds: int = 5
    max_levels: int = 30
    seed: int = 0
    min_rows: int = 30  # fewer labelled rows: model scores are reported but flag nothing (too noisy)

    def validate(self):
        if not 0.5 < self.auc_threshold <= 1.0:
            yield ("auc_threshold", f"must be in (0.5, 1], got {self.auc_threshold}")
        if not 0.5 < self.c_index_threshold <= 1.0:
            yield ("c_index_threshold", f"must be in (0.5, 1], got {self.c_index_threshold}")
        if self.folds < 2:
            yield ("folds", f"must be at least 2, got {self.folds}")


def encode_column(values: pd.Series, *, name: str, missing_values, index_dates: pd.Series | None,
                  max_levels: int) -> tuple[np.ndarray, str, np.ndarray]:
    """``(X (n, m) with NaN, kind, missing mask)`` for one raw text column."""
    text = values.astype(str).str.strip()
    missing = missing_mask(text, missing_values)
    present_text = text.where(~missing, "")
    if is_date_column(name, present_text):
        dates = parse_dates(present_text)
        origin = index_dates if index_dates is not None else pd.Timestamp("1970-01-01", tz="UTC")
        days = ((dates - origin).dt.total_seconds() / 86400.0).to_numpy(dtype=np.float64)
        missing = missing | np.isnan(days)
        return np.column_stack([days, missing]), "date", missing
    nums, bad = numeric_cells(present_text)
    n_present = int((~missing).sum())
    if n_present and (n_present - int(bad.sum())) > n_present / 2:
        arr = nums.to_numpy(dtype=np.float64)
        missing = missing | np.isnan(arr)
        return np.column_stack([arr, missing]), "numeric", missing
    counts = present_text[~missing].value_counts()
    levels = list(counts.index[:max_levels])
    cols = [(present_text == lv).to_numpy(dtype=np.float64) for lv in levels]
    if len(counts) > max_levels:
        cols.append((~missing & ~present_text.isin(levels)).to_numpy(dtype=np.float64))
    cols.append(missing.astype(np.float64))
    return np.column_stack(cols), "categorical", missing


def _folds(strata: np.ndarray, n_folds: int, seed: int):
    from sklearn.model_selection import StratifiedKFold

    _, counts = np.unique(strata, return_counts=True)
    k = min(n_folds, int(counts.min())) if counts.size > 1 else 0
    if k < 2:
        return None
    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(strata)), strata))


def _fill(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nan_to_num(np.nanmedian(train, axis=0))
    return np.where(np.isnan(train), med, train), np.where(np.isnan(test), med, test)


def _oof_auc(X: np.ndarray, y: np.ndarray, folds) -> float | None:
    from sklearn.metrics import roc_auc_score
    from sklearn.tree import DecisionTreeClassifier

    classes = np.unique(y)
    proba = np.zeros((len(y), len(classes)))
    for train, test in folds:
        tr, te = _fill(X[train], X[test])
        model = DecisionTreeClassifier(max_depth=3, min_samples_leaf=2, random_state=0).fit(tr, y[train])
        proba[np.ix_(test, np.searchsorted(classes, model.classes_))] = model.predict_proba(te)
    if len(classes) == 2:
        return float(roc_auc_score(y, proba[:, 1]))
    return float(roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=classes))


def _oof_c_index(X: np.ndarray, time: np.ndarray, event: np.ndarray, folds) -> float | None:
    from sksurv.metrics import concordance_index_censored
    from sksurv.tree import SurvivalTree
    from sksurv.util import Surv

    risk = np.zeros(len(time))
    for train, test in folds:
        tr, te = _fill(X[train], X[test])
        y = Surv.from_arrays(event=event[train], time=time[train])
        model = SurvivalTree(max_depth=3, min_samples_leaf=3, random_state=0).fit(tr, y)
        risk[test] = model.predict(te)
    return float(concordance_index_censored(event, time, risk)[0])


def _oof_monotone(x: np.ndarray, folds, score) -> float:
    """OOF score of the column itself as the prediction, its direction chosen on each training fold.

    Trees cut a number into a few leaves (ties cost concordance); a column
    that *is* the outcome up to its sign shows here at full strength.
    """
    pred = np.zeros(len(x))
    for train, test in folds:
        tr, te = _fill(x[train, None], x[test, None])
        sign = 1.0 if score(train, tr[:, 0]) >= 0.5 else -1.0
        pred[test] = sign * te[:, 0]
    return score(np.arange(len(x)), pred)


def auc_on(y: np.ndarray):
    from sklearn.metrics import roc_auc_score

    def score(rows, pred):
        return float(roc_auc_score(y[rows], pred)) if len(np.unique(y[rows])) == 2 else 0.5
    return score


def c_index_on(time: np.ndarray, event: np.ndarray):
    from sksurv.metrics import concordance_index_censored

    def score(rows, pred):
        return float(concordance_index_censored(event[rows], time[rows], pred)[0]) if event[rows].any() else 0.5
    return score


def _null_pattern(missing: np.ndarray, event: np.ndarray | None) -> bool:
    if event is None or missing.sum() < 2 or (~missing).sum() < 2:
        return False
    return bool(np.array_equal(missing, event == 0) or np.array_equal(missing, event == 1))


def leakage_report(raw: pd.DataFrame, *, labels: pd.DataFrame, exclude=(), index_dates: pd.Series | None = None,
                   missing_values=(), cfg: LeakageConfig = LeakageConfig()) -> dict:
    """Score every column of ``raw`` (text cells) against ``labels`` (rows aligned by index).

    ``labels``: ``event`` and ``time_days`` and/or ``subtype_code``;
    ``index_dates``: each row's prediction time (UTC), for date columns.
    """
    raw = raw.loc[labels.index]
    event = labels["event"].to_numpy(dtype=np.int64) if "event" in labels else None
    time = labels["time_days"].to_numpy(dtype=np.float64) if "time_days" in labels else None
    subtype = None
    if "subtype_code" in labels:
        sub = labels["subtype_code"]
        subtype = (sub.notna().to_numpy(), sub.fillna(-1).to_numpy(dtype=np.int64))
    idx_dates = index_dates.loc[labels.index] if index_dates is not None else None
    ev_folds = _folds(event, cfg.folds, cfg.seed) if event is not None else None
    sub_folds = None
    if subtype is not None:
        sub_folds = _folds(subtype[1][subtype[0]], cfg.folds, cfg.seed)
    columns = []
    for col in raw.columns:
        if col in exclude:
            continue
        X, kind, missing = encode_column(raw[col], name=col, missing_values=missing_values, index_dates=idx_dates,
                                         max_levels=cfg.max_levels)
        row = {"column": col, "kind": kind, "missing_fraction": float(missing.mean()) if len(missing) else 0.0,
               "auc_event": None, "c_index": None, "auc_subtype": None,
               "null_when_no_event": _null_pattern(missing, event), "after_index_fraction": None}
        if ev_folds is not None:
            row["auc_event"] = _oof_auc(X, event, ev_folds)
            if kind != "categorical":
                row["auc_event"] = max(row["auc_event"], _oof_monotone(X[:, 0], ev_folds, auc_on(event)))
            if time is not None:
                row["c_index"] = _oof_c_index(X, time, event.astype(bool), ev_folds)
                if kind != "categorical":
                    row["c_index"] = max(row["c_index"],
                                         _oof_monotone(X[:, 0], ev_folds, c_index_on(time, event.astype(bool))))
        if sub_folds is not None:
            known = subtype[0]
            row["auc_subtype"] = _oof_auc(X[known], subtype[1][known], sub_folds)
        if kind == "date" and idx_dates is not None:
            days = X[:, 0]
            ok = ~np.isnan(days)
            row["after_index_fraction"] = float((days[ok] > 0).mean()) if ok.any() else None
        row["reasons"] = _reasons(row, cfg, n_rows=len(labels))
        row["flagged"] = bool(row["reasons"])
        columns.append(row)
    return {"report": "leakage", "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(),
            "n_rows": len(labels), "labels": [c for c in ("event", "time_days", "subtype_code") if c in labels],
            "thresholds": {"auc": cfg.auc_threshold, "c_index": cfg.c_index_threshold,
                           "future_fraction": cfg.future_fraction},
            "folds": cfg.folds, "seed": cfg.seed, "columns": columns,
            "model_checks": len(labels) >= cfg.min_rows,
            "flagged": [c["column"] for c in columns if c["flagged"]]}


def _reasons(row: dict, cfg: LeakageConfig, *, n_rows: int) -> list[str]:
    out = []
    if n_rows < cfg.min_rows:
        row = {**row, "auc_event": None, "c_index": None, "auc_subtype": None}
    if row["auc_event"] is not None and row["auc_event"] >= cfg.auc_threshold:
        out.append(f"predicts the event alone: AUC {row['auc_event']:.3f} >= {cfg.auc_threshold}")
    if row["c_index"] is not None and row["c_index"] >= cfg.c_index_threshold:
        out.append(f"predicts survival time alone: C-index {row['c_index']:.3f} >= {cfg.c_index_threshold}")
    if row["auc_subtype"] is not None and row["auc_subtype"] >= cfg.auc_threshold:
        out.append(f"predicts the subtype alone: AUC {row['auc_subtype']:.3f} >= {cfg.auc_threshold}")
    if row["null_when_no_event"]:
        out.append("missing exactly when the event did not happen (or exactly when it did)")
    frac = row["after_index_fraction"]
    if frac is not None and frac >= cfg.future_fraction:
        out.append(f"{frac:.0%} of its dates fall after the index date (information from the future)")
    return out


def leakage_html(report: dict) -> str:
    return render.page("Target leakage report", leakage_sections(report))


def leakage_sections(report: dict) -> list[str]:
    """The report's HTML parts (summary, chart, table), for its own page or the run report."""
    cols = report["columns"]
    fig = render.new_figure(7.5, 0.3 * max(len(cols), 4) + 1.2)
    ax = fig.add_subplot(1, 1, 1)
    names = [c["column"] for c in cols]
    for k, (key, label) in enumerate((("auc_event", "AUC event"), ("c_index", "C-index"),
                                      ("auc_subtype", "AUC subtype"))):
        vals = [np.nan if c[key] is None else c[key] for c in cols]
        ax.barh(np.arange(len(cols)) + (k - 1) * 0.27, vals, height=0.27, label=label)
    ax.axvline(report["thresholds"]["auc"], color="red", linestyle="--", linewidth=1, label="AUC threshold")
    ax.axvline(report["thresholds"]["c_index"], color="darkred", linestyle=":", linewidth=1, label="C threshold")
    ax.set_yticks(np.arange(len(cols)), labels=[("! " if c["flagged"] else "") + n for c, n in zip(cols, names)])
    ax.set_xlim(0.3, 1.0)
    ax.invert_yaxis()
    ax.set_xlabel("single-column cross-validated score")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    rows = [{**c, "reasons": "; ".join(c["reasons"]) or ""} for c in cols]
    flagged = ", ".join(report["flagged"]) or "none"
    caveat = ("" if report.get("model_checks", True) else
              " Too few rows for the model scores to flag anything: only the null-pattern and date rules apply.")
    sections = [(f"<p>{report['n_rows']} labelled patients, {report['folds']}-fold cross-validation per column. "
                 f"Flagged: <b>{render.fmt(flagged)}</b>.{caveat}</p>"),
                render.img_tag(fig, alt="single-column predictive power"),
                render.table(rows, [("column", "column"), ("kind", "kind"), ("missing_fraction", "missing"),
                                    ("auc_event", "AUC event"), ("c_index", "C-index"),
                                    ("auc_subtype", "AUC subtype"), ("after_index_fraction", "after index date"),
                                    ("reasons", "why flagged")], mark=lambda r: r["flagged"])]
    return sections
