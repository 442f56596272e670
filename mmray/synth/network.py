"""A synthetic prior-knowledge network consistent with the planted pathways, plus decoys.

``interactions.tsv`` has the columns of a STRING / Reactome / OmniPath export
reduced to what mmray reads: ``source``, ``target``, ``type`` (``ppi``,
``regulates``) and ``score`` (0-1 confidence).  Planted edges:

* protein-protein interactions inside each planted programme (proliferation,
  immune cytolytic, squamous and adeno differentiation): a ring with chords,
  scores 0.75-0.99;
* transcriptional regulation: FOXM1 and E2F1 drive mitotic genes, IFNG and
  CXCL10 the interferon response, TP63/SOX2 the squamous and NKX2-1 the
  adeno programme, MYC drives E2F1, TP53 regulates CDKN2A, EGFR binds KRAS.

Decoys: as many random background-background edges as planted ones, and a
few planted-background edges, with the same range of scores, so a model that
trusts any edge blindly is misled.  Gene -> protein edges are not listed:
mmray links a gene to its proteins by symbol (``protein_map.tsv``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmray.synth.genomics import ADENO, IMMUNE, PLANTED, PROLIFERATION, SQUAMOUS

REGULATES: dict[str, tuple[str, ...]] = {
    "FOXM1": ("CCNB1", "PLK1", "AURKA", "BIRC5", "CENPF", "TOP2A", "KIF2C", "CDK1"),
    "E2F1": ("MCM2", "CCNA2", "CDK1", "TOP2A", "FOXM1"),
    "IFNG": ("CXCL9", "CXCL10", "IDO1", "GZMB"),
    "CXCL10": ("CD8A", "CD3E"),
    "TP63": ("KRT5", "KRT6A", "KRT14", "DSG3"),
    "SOX2": ("TP63",),
    "NKX2-1": ("SFTPC", "SFTPB", "NAPSA", "SFTA2"),
    "MYC": ("E2F1",),
    "TP53": ("CDKN2A",),
}
EXTRA_PPI = (("EGFR", "KRAS"), ("KRT5", "KRT14"), ("DSG3", "DSC3"), ("PKP1", "DSG3"), ("SFTPC", "SFTPB"),
             ("MUC1", "CEACAM6"))
PROGRAMMES = {"proliferation": PROLIFERATION, "immune": IMMUNE, "squamous": SQUAMOUS, "adeno": ADENO}
N_CROSS_DECOYS = 15


def _ring(genes, rng) -> list[tuple[str, str]]:
    """A ring over ``genes`` plus chords to the gene three steps on: connected, ~2 edges per gene."""
    n = len(genes)
    edges = {tuple(sorted((genes[i], genes[(i + k) % n]))) for i in range(n) for k in (1, 3) if n > k}
    return sorted(edges)


def planted_edges(rng: np.random.Generator) -> list[dict]:
    out = []
    for name, genes in PROGRAMMES.items():
        for a, b in _ring(list(genes), rng):
            out.append({"source": a, "target": b, "type": "ppi", "score": round(float(rng.uniform(0.75, 0.99)), 3),
                        "programme": name})
    ring = {tuple(sorted((e["source"], e["target"]))) for e in out}
    for a, b in EXTRA_PPI:
        if tuple(sorted((a, b))) in ring:
            continue
        out.append({"source": a, "target": b, "type": "ppi", "score": round(float(rng.uniform(0.75, 0.99)), 3),
                    "programme": "driver" if "EGFR" in (a, b) else "differentiation"})
    for tf, targets in REGULATES.items():
        for t in targets:
            out.append({"source": tf, "target": t, "type": "regulates",
                        "score": round(float(rng.uniform(0.75, 0.99)), 3), "programme": "regulation"})
    return out


def write_interactions(*, out_dir: Path, genes: list[str], seed: int) -> dict:
    """Write ``interactions.tsv`` (planted + decoys, shuffled); return the truth."""
    rng = np.random.default_rng([seed, 9])
    planted = planted_edges(rng)
    background = [g for g in genes if g not in PLANTED]
    have = {tuple(sorted((e["source"], e["target"]))) for e in planted}
    decoys = []
    while len(decoys) < len(planted) + N_CROSS_DECOYS and background:
        cross = len(decoys) >= len(planted)
        a = str(rng.choice(list(PLANTED))) if cross else str(rng.choice(background))
        b = str(rng.choice(background))
        key = tuple(sorted((a, b)))
        if a == b or key in have:
            continue
        have.add(key)
        kind = "regulates" if rng.random() < 0.2 else "ppi"
        decoys.append({"source": a, "target": b, "type": kind, "score": round(float(rng.uniform(0.3, 0.99)), 3)})
    rows = [*({k: e[k] for k in ("source", "target", "type", "score")} for e in planted), *decoys]
    order = rng.permutation(len(rows))
    lines = ["source\ttarget\ttype\tscore"] + [
        f"{rows[i]['source']}\t{rows[i]['target']}\t{rows[i]['type']}\t{rows[i]['score']}" for i in order]
    (out_dir / "interactions.tsv").write_text("\n".join(lines) + "\n")
    return {"file": "interactions.tsv", "planted": planted, "n_planted": len(planted), "n_decoys": len(decoys),
            "decoys": decoys, "gene_to_protein": "by symbol through protein_map.tsv (no codes_for rows)"}
