"""MAF -> per-gene deleterious-mutation indicators (samples x genes, 0/1).

A call counts as deleterious when (``rule``):

* ``classification`` (default): its ``Variant_Classification`` is one of the
  non-synonymous classes (:data:`NON_SYNONYMOUS`); Silent, UTR, intron, flank,
  RNA and IGR calls do not count;
* ``impact``: its VEP ``IMPACT`` is HIGH or MODERATE (``impact_levels``);
* ``auto``: ``impact`` where the MAF has an ``IMPACT`` value for the call,
  ``classification`` otherwise.

Every sample named in the MAF gets a row; its genes without a deleterious
call are 0.  Samples absent from the MAF get no row at all, so after the join
they are missing (NaN), never 0: a MAF cannot say a sample was sequenced and
clean unless it lists the sample.

Bad rows: a row with the wrong number of fields is dropped (its fields may be
shifted) and reported with file, line and any non-numeric value among its
numeric columns; a well-formed row with a non-numeric position or depth is
reported and still used (positions do not enter the indicators).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mmray.errors import CohortError
from mmray.features.table_io import cell_failure, numeric_cells, read_text_table, row_failure

NON_SYNONYMOUS = ("Missense_Mutation", "Nonsense_Mutation", "Frame_Shift_Del", "Frame_Shift_Ins",
                  "In_Frame_Del", "In_Frame_Ins", "Splice_Site", "Translation_Start_Site",
                  "Nonstop_Mutation")
IMPACT_LEVELS = ("HIGH", "MODERATE")
RULES = ("classification", "impact", "auto")
REQUIRED = ("Hugo_Symbol", "Tumor_Sample_Barcode", "Variant_Classification")
NUMERIC = ("Start_Position", "End_Position", "t_depth", "t_ref_count", "t_alt_count", "n_depth")


def read_maf(path: str) -> tuple[pd.DataFrame, list[dict], list[str]]:
    """``(calls, failures, samples)``: the used columns of every good row (plus ``line``),
    a failure per bad row or cell, and every sample id named by any row (bad ones too)."""
    table = read_text_table(path, what="mutations (MAF)", sep="\t")
    missing = [c for c in REQUIRED if c not in table.header]
    if missing:
        raise CohortError(f"{path} is not a MAF this reader can use: it lacks column(s) {missing} "
                          f"(found: {table.header[:12]}{' ...' if len(table.header) > 12 else ''}); "
                          f"a MAF needs {list(REQUIRED)}")
    calls = table.frame.copy()
    calls["line"] = table.lines
    failures: list[dict] = []
    for col in (c for c in NUMERIC if c in calls.columns):
        _, bad = numeric_cells(calls[col])
        for i in np.flatnonzero(bad):
            sample = str(calls["Tumor_Sample_Barcode"].iloc[i]).strip()
            failures.append(cell_failure(path=path, line=int(calls["line"].iloc[i]), column=col,
                                         value=calls[col].iloc[i], sample=sample,
                                         reason=f"{calls[col].iloc[i]!r} is not a number; the call is "
                                                f"still used (positions do not enter the indicators)"))
    samples = [str(s).strip() for s in calls["Tumor_Sample_Barcode"]]
    for row in table.bad_rows:
        fields = row["fields"]
        sample = str(fields.get("Tumor_Sample_Barcode", "")).strip()
        nonnum = [(c, fields[c]) for c in NUMERIC if c in fields and numeric_cells(pd.Series([fields[c]]))[1][0]]
        reason = table.bad_row_reason(row)
        if nonnum:
            reason += "; also " + ", ".join(f"{c} {v!r} is not a number" for c, v in nonnum)
        failures.append(row_failure(path=path, line=row["line"], reason=reason, sample=sample or None,
                                    column=nonnum[0][0] if nonnum else None, value=nonnum[0][1] if nonnum else None,
                                    n_fields=row["n_fields"], expected_fields=len(table.header)))
        if sample:
            samples.append(sample)
    keep = [c for c in (*REQUIRED, "IMPACT", "line") if c in calls.columns]
    calls = calls[keep].copy()
    for c in keep[:-1]:
        calls[c] = calls[c].astype(str).str.strip()
    return calls, failures, list(dict.fromkeys(s for s in samples if s))


def deleterious(calls: pd.DataFrame, *, rule: str = "classification", classes=NON_SYNONYMOUS,
                impact_levels=IMPACT_LEVELS) -> np.ndarray:
    """Boolean mask of the calls that count (see the module docstring)."""
    if rule not in RULES:
        raise CohortError(f"tables.mutations.rule must be one of {RULES}, got {rule!r}")
    by_class = calls["Variant_Classification"].isin(set(classes)).to_numpy()
    if rule == "classification":
        return by_class
    if "IMPACT" not in calls.columns:
        if rule == "impact":
            raise CohortError("tables.mutations.rule is 'impact' but the MAF has no IMPACT column; "
                              "use rule: classification (or auto)")
        return by_class
    impact = calls["IMPACT"].str.upper()
    by_impact = impact.isin({str(v).upper() for v in impact_levels}).to_numpy()
    if rule == "impact":
        return by_impact
    has_impact = (impact != "").to_numpy()
    return np.where(has_impact, by_impact, by_class)


def mutation_indicators(calls: pd.DataFrame, samples: list[str], *, rule: str = "classification",
                        classes=NON_SYNONYMOUS, impact_levels=IMPACT_LEVELS, genes=(),
                        min_samples: int = 1) -> pd.DataFrame:
    """Samples x genes int8 0/1: 1 when the sample has a deleterious call in the gene.

    ``samples``: every sample the MAF names (rows of the result, zeros when no
    call counts). Columns: ``genes`` when given (all of them, zeros included),
    else the genes with a deleterious call in at least ``min_samples`` samples.
    """
    mask = deleterious(calls, rule=rule, classes=classes, impact_levels=impact_levels)
    hits = calls.loc[mask, ["Tumor_Sample_Barcode", "Hugo_Symbol"]].drop_duplicates()
    hits = hits[hits["Hugo_Symbol"] != ""]
    if genes:
        columns = list(dict.fromkeys(genes))
        hits = hits[hits["Hugo_Symbol"].isin(set(columns))]
    else:
        counts = hits.groupby("Hugo_Symbol")["Tumor_Sample_Barcode"].nunique()
        columns = sorted(counts.index[counts >= max(min_samples, 1)])
        hits = hits[hits["Hugo_Symbol"].isin(set(columns))]
    out = pd.DataFrame(np.zeros((len(samples), len(columns)), dtype=np.int8), index=pd.Index(samples, name="sample_id"),
                       columns=columns)
    if len(hits):
        rows = out.index.get_indexer(hits["Tumor_Sample_Barcode"])
        cols = out.columns.get_indexer(hits["Hugo_Symbol"])
        ok = (rows >= 0) & (cols >= 0)
        values = out.to_numpy()
        values[rows[ok], cols[ok]] = 1
        out = pd.DataFrame(values, index=out.index, columns=out.columns)
    return out
