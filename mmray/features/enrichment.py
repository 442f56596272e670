"""Over-representation of gene sets among a list of top genes: hypergeometric test + Benjamini-Hochberg FDR.

For each set ``S`` of a GMT and a ranked *universe* ``U`` (the genes that
could have been ranked, e.g. every gene a model saw), with ``T`` the top
genes: ``K = |S & U|``, ``k = |S & T|``, and ``p = P(X >= k)`` for ``X ~
Hypergeom(|U|, K, |T|)`` (``scipy.stats.hypergeom.sf(k - 1, ...)``).  The
FDR is ``scipy.stats.false_discovery_control(p, method="bh")`` over the sets
with at least ``min_size`` members in the universe.  Offline: no web
service, the cohort's own GMT.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import stats

COLUMNS = ["set_name", "set_size", "in_universe", "overlap", "expected", "fold_enrichment", "p_value", "fdr",
           "genes"]


def enrich(top: Iterable[str], universe: Iterable[str], gene_sets: Mapping[str, Iterable[str]], *,
           min_size: int = 3) -> pd.DataFrame:
    """One row per tested set (module doc), most significant first; ``genes``: the overlap, comma-separated."""
    universe = set(map(str, universe))
    top = [g for g in dict.fromkeys(map(str, top)) if g in universe]
    top_set = set(top)
    rows = []
    for name, members in gene_sets.items():
        members = set(map(str, members))
        K = len(members & universe)
        if K < min_size:
            continue
        hit = sorted(members & top_set, key=top.index)
        p = float(stats.hypergeom.sf(len(hit) - 1, len(universe), K, len(top))) if top else 1.0
        expected = K * len(top) / max(len(universe), 1)
        rows.append({"set_name": name, "set_size": len(members), "in_universe": K, "overlap": len(hit),
                     "expected": expected, "fold_enrichment": len(hit) / expected if expected else np.nan,
                     "p_value": min(1.0, p), "genes": ",".join(hit)})
    out = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "fdr"])
    out["fdr"] = stats.false_discovery_control(out["p_value"].to_numpy(), method="bh") if len(out) else []
    return out[COLUMNS].sort_values(["fdr", "p_value", "set_name"]).reset_index(drop=True)
