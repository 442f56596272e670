"""Synthetic RPPA-style protein matrix driven by the planted pathways, and its protein -> gene map.

``proteins.tsv`` is samples x proteins (first column ``Sample_ID``, TCGA
sample barcodes), values on the log2 median-centred scale RPPA level-4 data
use.  Antibody names follow RPPA conventions (``Cyclin_B1``, ``Ki-67``,
``EGFR_pY1068``), so the gene behind a protein comes from
``protein_map.tsv`` (``protein``, ``gene``), as for real arrays:

* proliferation and immune proteins load on ``z_prolif`` / ``z_immune``
  (the same factors as their genes' mRNA: they carry survival signal);
* driver readouts follow the driver calls (LKB1 lost with STK11 mutations,
  phospho-EGFR up with EGFR mutations, p53 stabilised by TP53 mutations,
  c-Myc up with MYC amplification);
* subtype markers (p63, CK5, TTF1, Napsin-A) follow the histology;
* ERCC1 shows the response factor, DPYD and UGT1A1 the toxicity factor
  (:mod:`mmray.synth.treatment`);
* the rest are background proteins of background genes (noise).

Presence (``p_proteins``, 0.75) and values come from their own random
stream, so a cohort's other files do not change.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmray.synth.latent import Patient

P_PROTEINS = 0.75
# protein -> (gene, factor, loading); factors: z_* latent attributes, mut:<gene>, cnv:<gene>, subtype:<name>
PLANTED_PROTEINS: dict[str, tuple[str, str, float]] = {
    "Ki-67": ("MKI67", "z_prolif", 1.0), "Cyclin_B1": ("CCNB1", "z_prolif", 0.9), "CDK1": ("CDK1", "z_prolif", 0.8),
    "PLK1": ("PLK1", "z_prolif", 0.85), "FoxM1": ("FOXM1", "z_prolif", 0.9), "Aurora-A": ("AURKA", "z_prolif", 0.8),
    "Survivin": ("BIRC5", "z_prolif", 0.75), "TOPO-II-alpha": ("TOP2A", "z_prolif", 0.9),
    "E2F1": ("E2F1", "z_prolif", 0.7),
    "CD8": ("CD8A", "z_immune", 1.0), "Granzyme-B": ("GZMB", "z_immune", 0.9), "PD-1": ("PDCD1", "z_immune", 0.8),
    "LAG-3": ("LAG3", "z_immune", 0.75), "IDO": ("IDO1", "z_immune", 0.85), "Lck": ("LCK", "z_immune", 0.8),
    "ZAP-70": ("ZAP70", "z_immune", 0.7),
    "LKB1": ("STK11", "mut:STK11", -1.6), "EGFR": ("EGFR", "mut:EGFR", 0.6),
    "EGFR_pY1068": ("EGFR", "mut:EGFR", 1.4), "p53": ("TP53", "mut:TP53", 0.9), "c-Myc": ("MYC", "cnv:MYC", 1.3),
    "p16_INK4a": ("CDKN2A", "cnv:CDKN2A", 1.2),
    "p63": ("TP63", "subtype:squamous_cell", 1.6), "CK5": ("KRT5", "subtype:squamous_cell", 1.4),
    "TTF1": ("NKX2-1", "subtype:adenocarcinoma", 1.5), "Napsin-A": ("NAPSA", "subtype:adenocarcinoma", 1.3),
    "ERCC1": ("ERCC1", "z_response", -1.0), "DPYD": ("DPYD", "z_toxicity", -1.1),
    "UGT1A1": ("UGT1A1", "z_toxicity", -0.9),
}
N_BACKGROUND = 45
NOISE_SD = 0.6
_PHOSPHO = ("pS473", "pT308", "pS9", "pY705", "pT202_Y204", "pS235_S236")


def background_proteins(genes: list[str], *, n: int = N_BACKGROUND) -> dict[str, str]:
    """Background antibody name -> its gene: total protein for most, a phospho-site for every fourth.

    Drawn from the non-planted platform genes with a fixed stream (the same for every cohort seed).
    """
    from mmray.synth.genomics import PLANTED

    pool = [g for g in genes if g not in PLANTED]
    rng = np.random.default_rng(20_240_602)
    picked = [str(g) for g in rng.choice(pool, size=min(n, len(pool)), replace=False)]
    return {(f"{g}_{_PHOSPHO[k % len(_PHOSPHO)]}" if k % 4 == 3 else g): g for k, g in enumerate(picked)}


def _factor(p: Patient, factor: str) -> float:
    if factor.startswith("z_"):
        return float(getattr(p, factor))
    kind, name = factor.split(":", 1)
    if kind == "mut":
        return float(p.mutations.get(name, False))
    if kind == "cnv":
        return float(p.cnv.get(name, 0) != 0)
    return float(p.subtype == name)


def write_proteins(patients: list[Patient], *, out_dir: Path, genes: list[str], seed: int) -> dict:
    """Write ``proteins.tsv`` and ``protein_map.tsv``; set ``has_proteins``; return the truth."""
    rng = np.random.default_rng([seed, 8])
    for p in patients:
        p.has_proteins = bool(rng.random() < P_PROTEINS)
    if len(patients) >= 4:
        for p in patients[:2]:  # like the other modalities, the first two patients have everything
            p.has_proteins = True
    background = background_proteins(genes)
    names = [*PLANTED_PROTEINS, *background]
    samples = [p for p in patients if p.has_proteins]
    sd = {name: float(rng.uniform(0.4, 1.0)) for name in background}
    values = np.zeros((len(samples), len(names)))
    for j, name in enumerate(names):
        if name in PLANTED_PROTEINS:
            _, factor, load = PLANTED_PROTEINS[name]
            signal = np.array([_factor(p, factor) for p in samples])
            if not factor.startswith("z_"):
                signal = signal - signal.mean() if len(signal) else signal
            values[:, j] = load * signal + NOISE_SD * rng.normal(size=len(samples))
        else:
            values[:, j] = sd[name] * rng.normal(size=len(samples))
    values -= np.median(values, axis=0, keepdims=True) if len(samples) else 0.0  # median-centred, as RPPA L4
    lines = ["\t".join(["Sample_ID", *names])]
    lines += ["\t".join([p.sample_barcode, *(f"{v:.4f}" for v in row)]) for p, row in zip(samples, values)]
    (out_dir / "proteins.tsv").write_text("\n".join(lines) + "\n")
    gene_of = {**{k: v[0] for k, v in PLANTED_PROTEINS.items()}, **background}
    (out_dir / "protein_map.tsv").write_text(
        "\n".join(["protein\tgene", *(f"{n}\t{gene_of[n]}" for n in names)]) + "\n")
    return {"files": {"proteins": "proteins.tsv", "map": "protein_map.tsv"},
            "planted": {k: {"gene": g, "factor": f, "loading": w} for k, (g, f, w) in PLANTED_PROTEINS.items()},
            "background": background, "noise_sd": NOISE_SD, "p_proteins": P_PROTEINS,
            "samples": [p.sample_barcode for p in samples]}
