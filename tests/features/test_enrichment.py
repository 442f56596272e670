"""Gene-set over-representation: hypergeometric tails and BH FDR against independent references."""

from __future__ import annotations

from math import comb

import pytest

from mmray.features.enrichment import enrich


def _tail(N, K, n, k):
    """P(X >= k) for X ~ Hypergeom(N, K, n), by counting (no scipy)."""
    return sum(comb(K, i) * comb(N - K, n - i) for i in range(k, min(K, n) + 1)) / comb(N, n)


def test_hypergeometric_tail_and_bh_fdr():
    universe = [f"G{i}" for i in range(100)]
    top = universe[:10]
    sets = {"HIT": universe[:8] + ["OFF1"], "HALF": universe[5:15], "MISS": universe[50:60], "TINY": ["G1", "G2"]}
    e = enrich(top, universe, sets, min_size=3).set_index("set_name")
    assert "TINY" not in e.index  # fewer than min_size members among the ranked genes
    assert e.loc["HIT", "overlap"] == 8 and e.loc["HIT", "in_universe"] == 8 and e.loc["HIT", "set_size"] == 9
    assert e.loc["HIT", "p_value"] == pytest.approx(_tail(100, 8, 10, 8), rel=1e-9)
    assert e.loc["HALF", "p_value"] == pytest.approx(_tail(100, 10, 10, 5), rel=1e-9)
    assert e.loc["MISS", "p_value"] == pytest.approx(1.0)
    assert e.loc["HIT", "expected"] == pytest.approx(8 * 10 / 100)
    # Benjamini-Hochberg by hand over the three tested sets
    p = sorted(e["p_value"])
    bh = [min(1.0, min(p[j] * 3 / (j + 1) for j in range(i, 3))) for i in range(3)]
    assert sorted(e["fdr"]) == pytest.approx(bh)
    assert e.loc["HIT", "genes"].split(",") == universe[:8]  # in the ranking's order
    assert list(enrich(top, universe, sets)["set_name"])[0] == "HIT"  # most significant first


def test_top_genes_outside_the_universe_are_ignored():
    e = enrich(["X", "G0"], ["G0", "G1", "G2", "G3"], {"S": ["G0", "G1", "G2"]}).iloc[0]
    assert e["overlap"] == 1 and e["p_value"] == pytest.approx(_tail(4, 3, 1, 1))
