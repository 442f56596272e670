"""Bias report: label rates and class balance per sensitive attribute.

For each attribute (default ``gender``, ``race`` and ``age_group``, the age
column binned by ``age_bins_years``) and each of its values (a *facet* ``a``;
missing values form the facet ``(missing)``), against the rest of the cohort
``d``:

* ``n``, ``share`` = n_a / n;
* ``class_imbalance`` = (n_a - n_d) / (n_a + n_d) (SageMaker Clarify CI);
* for each label (``event``, and ``subtype=<class>`` one-vs-rest): positives
  and rate ``q_a`` in the facet, ``q_d`` in the rest, and the difference in
  proportions of labels ``dpl = q_a - q_d`` (Clarify DPL); ``None`` where the
  rest is empty.  Subtype rates count only patients whose subtype is known.

Numbers are computed over the labelled patients.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import pandas as pd

from mmray.features.clinical import missing_mask
from mmray.features.table_io import numeric_cells
from mmray.report import render

MISSING_FACET = "(missing)"
AGE_NAMES = ("age_at_diagnosis_years", "age_at_diagnosis", "age_at_index", "age_years", "age")


@dataclass(frozen=True)
class BiasConfig:
    """The ``tables.reports.bias`` section."""

    enabled: bool = True
    attributes: tuple[str, ...] = ("gender", "race", "age_group")
    age_column: str | None = None  # default: the first of AGE_NAMES the table has
    age_bins_years: tuple[float, ...] = (50.0, 60.0, 70.0, 80.0)

    def validate(self):
        if list(self.age_bins_years) != sorted(set(self.age_bins_years)):
            yield ("age_bins_years", f"must increase strictly, got {list(self.age_bins_years)}")


def age_groups(values: pd.Series, bins, *, missing_values=()) -> pd.Series:
    """Ages (text or numbers) -> ``<50``, ``50-59``, ..., ``>=80`` (``(missing)`` when unknown)."""
    text = values.astype(str)
    nums, _ = numeric_cells(text.where(~missing_mask(text, missing_values), ""))
    edges = list(bins)
    names = [f"<{edges[0]:g}"] + [f"{a:g}-{b - 1:g}" if float(a).is_integer() and float(b).is_integer()
                                  else f"{a:g}-<{b:g}" for a, b in pairwise(edges)] + [f">={edges[-1]:g}"]
    idx = np.searchsorted(np.asarray(edges, dtype=float), nums.to_numpy(), side="right")
    return pd.Series([MISSING_FACET if np.isnan(v) else names[k] for v, k in zip(nums.to_numpy(), idx)],
                     index=values.index)


def _label_columns(labels: pd.DataFrame, subtype_mapping: dict[str, int] | None) -> dict[str, tuple]:
    """label name -> (known mask, positive mask)."""
    out = {}
    if "event" in labels:
        ev = labels["event"]
        out["event"] = (ev.notna().to_numpy(), (ev == 1).fillna(False).to_numpy(dtype=bool))
    if "subtype" in labels:
        sub = labels["subtype"]
        known = sub.notna().to_numpy()
        classes = list(subtype_mapping) if subtype_mapping else sorted(sub.dropna().unique())
        for c in classes:
            out[f"subtype={c}"] = (known, (sub == c).fillna(False).to_numpy(dtype=bool))
    return out


def facet_stats(facets: pd.Series, label_cols: dict) -> list[dict]:
    """Per facet value: counts, share, class imbalance and per-label q_a, q_d, DPL."""
    values = facets.to_numpy(dtype=object)
    n = len(values)
    counts = pd.Series(values).value_counts()
    out = []
    for facet, n_a in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0]))):  # largest first, ties by name
        a = values == facet
        n_a = int(n_a)
        n_d = n - n_a
        row = {"facet": str(facet), "n": n_a, "share": n_a / n if n else None,
               "class_imbalance": (n_a - n_d) / (n_a + n_d) if n else None, "labels": {}}
        for name, (known, pos) in label_cols.items():
            ka, kd = a & known, ~a & known
            qa = float(pos[ka].mean()) if ka.any() else None
            qd = float(pos[kd].mean()) if kd.any() else None
            row["labels"][name] = {"n": int(ka.sum()), "positives": int(pos[ka].sum()), "rate": qa,
                                   "rate_rest": qd, "dpl": None if qa is None or qd is None else qa - qd}
        out.append(row)
    return out


def bias_report(raw: pd.DataFrame, *, labels: pd.DataFrame, cfg: BiasConfig = BiasConfig(), missing_values=(),
                subtype_mapping: dict[str, int] | None = None) -> dict:
    """The bias report over the rows of ``labels`` (``raw``: text cells, same index)."""
    raw = raw.loc[labels.index]
    label_cols = _label_columns(labels, subtype_mapping)
    attributes, skipped = [], []
    for attr in cfg.attributes:
        column = attr
        if attr == "age_group":
            column = cfg.age_column or next((c for c in AGE_NAMES if c in raw.columns), None)
            if column is None or column not in raw.columns:
                looked = cfg.age_column or AGE_NAMES
                skipped.append({"attribute": attr, "reason": f"no age column (looked for {looked})"})
                continue
            facets = age_groups(raw[column], cfg.age_bins_years, missing_values=missing_values)
        elif attr not in raw.columns:
            skipped.append({"attribute": attr, "reason": f"the clinical table has no column {attr!r}"})
            continue
        else:
            text = raw[attr].astype(str).str.strip()
            facets = text.where(~missing_mask(text, missing_values), MISSING_FACET)
        attributes.append({"attribute": attr, "column": column, "facets": facet_stats(facets, label_cols)})
    return {"report": "bias", "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(),
            "n_rows": len(labels), "labels": list(label_cols), "attributes": attributes, "skipped": skipped}


def bias_html(report: dict) -> str:
    return render.page("Bias report", bias_sections(report))


def bias_sections(report: dict, *, heading: str = "h2") -> list[str]:
    """The report's HTML parts (one chart and table per attribute); ``heading`` tags the attribute titles."""
    sections = [(f"<p>{report['n_rows']} labelled patients. DPL = q<sub>a</sub> &minus; q<sub>d</sub>: the label "
                 f"rate in the facet minus the rate in the rest; class imbalance = (n<sub>a</sub> &minus; "
                 f"n<sub>d</sub>) / n.</p>")]
    for attr in report["attributes"]:
        rows = []
        for f in attr["facets"]:
            row = {"facet": f["facet"], "n": f["n"], "share": f["share"], "ci": f["class_imbalance"]}
            for name, s in f["labels"].items():
                row[f"{name} rate"], row[f"{name} dpl"] = s["rate"], s["dpl"]
            rows.append(row)
        cols = [("facet", "facet"), ("n", "n"), ("share", "share"), ("ci", "class imbalance")]
        for name in report["labels"]:
            cols += [(f"{name} rate", f"{name} rate"), (f"{name} dpl", f"{name} DPL")]
        fig = render.new_figure(7.0, 2.6)
        ax = fig.add_subplot(1, 1, 1)
        names = [f["facet"] for f in attr["facets"]]
        width = 0.8 / max(len(report["labels"]), 1)
        for k, name in enumerate(report["labels"]):
            vals = [np.nan if f["labels"][name]["rate"] is None else f["labels"][name]["rate"] for f in attr["facets"]]
            ax.bar(np.arange(len(names)) + k * width, vals, width=width, label=name)
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, labels=names, rotation=20, fontsize=8)
        ax.set_ylabel("label rate")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
        sections += [f"<{heading}>{render.fmt(attr['attribute'])} (column {render.fmt(attr['column'])})</{heading}>",
                     render.img_tag(fig, alt=f"label rates by {attr['attribute']}"), render.table(rows, cols)]
    for s in report["skipped"]:
        sections.append(f"<p>Skipped {render.fmt(s['attribute'])}: {render.fmt(s['reason'])}</p>")
    return sections
