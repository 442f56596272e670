"""Synthetic cohorts for the table tests: the real writers, without slides and CT.

``write_tables_cohort`` runs :func:`mmray.synth.cohort.write_cohort` with the
slide and CT writers switched off, so a cohort takes a fraction of a second:
the same clinical.csv, expression.tsv, mutations.maf, cnv.tsv, signatures.gmt,
cohort.yaml and truth.json (corruptions included), and a manifest with no
rows.  Tests that need the image modalities listed use ``write_cohort``.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from unittest import mock

from mmray.features.star_counts import VALUE_COLUMNS
from mmray.synth import cohort as cohort_mod

TABLE_MODALITIES = ("clinical", "expression", "mutations", "cnv", "proteins", "knowledge")


def write_tables_cohort(out: Path, *, patients: int = 8, seed: int = 0, corrupt: int = 0,
                        profile: str = "tiny") -> dict:
    """Write the table parts of a synthetic cohort into ``out``; returns truth.json."""
    with mock.patch.object(cohort_mod, "write_slides", lambda *a, **k: []), \
            mock.patch.object(cohort_mod, "write_ct", lambda *a, **k: []):
        cohort_mod.write_cohort(out, patients=patients, seed=seed, profile=profile, corrupt=corrupt)
    return json.loads((Path(out) / "truth.json").read_text())


def patients_by_id(truth: dict) -> dict[str, dict]:
    return {p["patient_id"]: p for p in truth["patients"]}


# ---------------------------------------------------------------- GDC STAR-counts files

STAR_GENES = [  # gene_id, gene_name, gene_type
    ("ENSG00000146648.18", "EGFR", "protein_coding"),
    ("ENSG00000133703.12", "KRAS", "protein_coding"),
    ("ENSG00000141510.18", "TP53", "protein_coding"),
    ("ENSG00000228630.5", "HOTAIR", "lncRNA"),
    ("ENSG00000280441.3", "TP53", "lncRNA"),  # a second id with the same symbol, as GENCODE has
]
STAR_SAMPLES = ["TCGA-05-4244-01A", "TCGA-05-4249-01A", "TCGA-05-4250-11A"]
STAR_QC = ("N_unmapped", "N_multimapping", "N_noFeature", "N_ambiguous")


def star_values(s: int, g: int) -> list[float]:
    """Deterministic per (sample, gene): unstranded, stranded_first, stranded_second, tpm, fpkm, fpkm_uq."""
    base = 100 * (s + 1) + 10 * g
    return [base, base // 2, base - base // 2, base / 7.0, base / 11.0, base / 13.0]


def star_text(s: int, *, bad_tpm_gene: int | None = None) -> str:
    lines = ["# gene-model: GENCODE v36", "\t".join(["gene_id", "gene_name", "gene_type", *VALUE_COLUMNS])]
    lines += [f"{q}\t\t\t{1000 + k}\t{500 + k}\t{500 + k}\t\t\t" for k, q in enumerate(STAR_QC)]
    for g, (gid, name, gtype) in enumerate(STAR_GENES):
        vals = [f"{v:g}" if isinstance(v, int) else f"{v:.4f}" for v in star_values(s, g)]
        if g == bad_tpm_gene:
            vals[3] = "n/a?"
        lines.append("\t".join([gid, name, gtype, *vals]))
    return "\n".join(lines) + "\n"


def write_star_cohort(root: Path, *, bad_tpm: bool = False, extra_unlisted: bool = False) -> dict[str, Path]:
    """gdc-client layout: ``root/<file uuid>/<file uuid>.rna_seq.augmented_star_gene_counts.tsv`` + sheet."""
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    rows = ["File ID\tFile Name\tData Category\tData Type\tProject ID\tCase ID\tSample ID\tSample Type"]
    for s, sample in enumerate(STAR_SAMPLES):
        fid = str(uuid.UUID(int=s + 1))
        name = f"{fid}.rna_seq.augmented_star_gene_counts.tsv"
        (root / fid).mkdir(exist_ok=True)
        path = root / fid / name
        path.write_text(star_text(s, bad_tpm_gene=1 if (bad_tpm and s == 1) else None))
        files[sample] = path
        kind = "Primary Tumor" if sample.endswith("01A") else "Solid Tissue Normal"
        rows.append(f"{fid}\t{name}\tTranscriptome Profiling\tGene Expression Quantification\tTCGA-LUAD\t"
                    f"{sample[:12]}\t{sample}\t{kind}")
    if extra_unlisted:
        (root / "stray").mkdir(exist_ok=True)
        (root / "stray" / "stray.rna_seq.augmented_star_gene_counts.tsv").write_text(star_text(0))
    (root / "gdc_sample_sheet.2024-05-01.tsv").write_text("\n".join(rows) + "\n")
    return files
