"""Prior-knowledge interaction tables (STRING, Reactome, OmniPath exports) -> ``source, target, type, score``.

The file is a CSV/TSV (or Parquet) with columns ``source`` and ``target``
(gene symbols or protein names), optional ``type`` (``ppi``, ``regulates``,
``codes_for``, or any other word; default ``ppi``) and optional ``score``
(a confidence; STRING's 0-1000 ``combined_score`` scale is divided by 1000).
Header names are matched case-insensitively, and STRING's
``protein1``/``protein2``/``combined_score`` are accepted as aliases.

Bad rows cost that row: an empty endpoint or a non-numeric score is a
failure naming file, line, column and value; self-loops are dropped with a
note; a pair listed twice with the same type keeps its highest score.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mmray.errors import CohortError
from mmray.features.table_io import numeric_cells, read_any_table

KNOWN_TYPES = ("ppi", "regulates", "codes_for")
DIRECTED = ("regulates", "codes_for")
_ALIASES = {"source": ("source", "protein1", "gene1", "source_genesymbol", "from"),
            "target": ("target", "protein2", "gene2", "target_genesymbol", "to"),
            "type": ("type", "interaction_type", "annotation"),
            "score": ("score", "combined_score", "confidence", "weight")}


def _column(header: list[str], role: str) -> str | None:
    lower = {h.strip().lower(): h for h in header}
    return next((lower[a] for a in _ALIASES[role] if a in lower), None)


def read_interactions(path: str, *, fmt: str = "auto") -> tuple[pd.DataFrame, list[dict], list[str]]:
    """``(edges, failures, notes)``; ``edges``: ``source, target, type, score`` (score NaN when not given)."""
    table = read_any_table(path, what="interactions", fmt=fmt)
    cols = {role: _column(table.header, role) for role in _ALIASES}
    missing = [r for r in ("source", "target") if cols[r] is None]
    if missing:
        raise CohortError(f"{table.name}: no {' or '.join(missing)} column; an interactions table needs columns "
                          f"source, target [, type, score] (found: {', '.join(table.header)})")
    frame, failures, notes = table.frame, [], []
    src = frame[cols["source"]].astype(str).str.strip()
    tgt = frame[cols["target"]].astype(str).str.strip()
    kind = (frame[cols["type"]].astype(str).str.strip().str.lower().replace("", "ppi") if cols["type"]
            else pd.Series("ppi", index=frame.index))
    if cols["type"] is None:
        notes.append(f"{table.name}: no type column; every edge is read as ppi")
    keep = np.ones(len(frame), bool)
    for i in np.flatnonzero(((src == "") | (tgt == "")).to_numpy()):
        col = cols["source"] if src.iloc[i] == "" else cols["target"]
        failures.append(table.failure(i, column=col, value="", reason="an interaction endpoint is empty; row skipped"))
        keep[i] = False
    score = pd.Series(np.nan, index=frame.index)
    if cols["score"]:
        score, bad = numeric_cells(frame[cols["score"]].astype(str).str.strip())
        for i in np.flatnonzero(bad):
            failures.append(table.failure(i, column=cols["score"], value=frame[cols["score"]].iloc[i],
                                          reason="the score is not a number; row skipped"))
            keep[i] = False
        finite = score[keep & score.notna().to_numpy()]
        if len(finite) and float(finite.max()) > 1.0:
            score = score / 1000.0
            notes.append(f"{table.name}: scores above 1 (max {float(finite.max()):g}) read as STRING's 0-1000 "
                         f"scale and divided by 1000")
    for row in table.bad_rows:
        failures.append({"item": f"{table.name}:{row['line']}", "patient_id": None, "file": table.name,
                         "line": row["line"], "reason": table.bad_row_reason(row)})
    loops = keep & (src == tgt).to_numpy()
    if loops.any():
        notes.append(f"{table.name}: {int(loops.sum())} self-interaction(s) dropped")
        keep &= ~loops
    edges = pd.DataFrame({"source": src[keep].to_numpy(), "target": tgt[keep].to_numpy(),
                          "type": kind[keep].to_numpy(), "score": score[keep].to_numpy(dtype=float)})
    undirected = ~edges["type"].isin(DIRECTED)
    swap = undirected & (edges["source"] > edges["target"])  # undirected pairs in one canonical order
    edges.loc[swap, ["source", "target"]] = edges.loc[swap, ["target", "source"]].to_numpy()
    n = len(edges)
    edges = (edges.sort_values("score", ascending=False, na_position="last")
             .drop_duplicates(["source", "target", "type"]).sort_values(["type", "source", "target"])
             .reset_index(drop=True))
    if len(edges) < n:
        notes.append(f"{table.name}: {n - len(edges)} repeated interaction(s) collapsed (highest score kept)")
    other = sorted(set(edges["type"]) - set(KNOWN_TYPES))
    if other:
        notes.append(f"{table.name}: edge type(s) {other[:6]} are not among {list(KNOWN_TYPES)}; the graph model "
                     f"reads them as undirected 'other' edges")
    return edges, failures, notes

