"""Synthetic genomics files: formats, truth they carry, planted signal, corrupt rows, determinism."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from mmray.errors import ConfigError, MmrayError
from mmray.synth.genomics import MAF_COLUMNS, PLANTED, write_genomics
from mmray.synth.latent import DRIVER_CNV, DRIVER_MUTATIONS, sample_patients
from mmray.synth.profiles import get_profile

TINY = get_profile("tiny")
ALIQUOT = re.compile(r"^TCGA-\d\d-\d{4}-01A-11[RD]-[A-Z0-9]{4}-\d\d$")
STANDARD_MAF = ("Hugo_Symbol", "Entrez_Gene_Id", "Center", "NCBI_Build", "Chromosome", "Start_Position",
                "End_Position", "Strand", "Variant_Classification", "Variant_Type", "Reference_Allele",
                "Tumor_Seq_Allele1", "Tumor_Seq_Allele2", "Tumor_Sample_Barcode", "Matched_Norm_Sample_Barcode",
                "HGVSp_Short", "IMPACT", "t_depth", "t_alt_count")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """8 patients; patient 2 has a malformed MAF row, patient 3 (no mutation data) one in expression."""
    patients = sample_patients(8, profile=TINY, seed=3)
    patients[2].has_mutations = patients[2].has_expression = True
    patients[3].has_mutations, patients[3].has_expression = False, True
    for p in patients[2:4]:
        p.corruptions.append("malformed_table_row")
    out = tmp_path_factory.mktemp("tiny")
    return patients, write_genomics(patients, out_dir=out, profile=TINY, seed=3), out


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """120 clean patients: enough for the signal checks."""
    patients = sample_patients(120, profile=TINY, seed=3)
    out = tmp_path_factory.mktemp("c120")
    return patients, write_genomics(patients, out_dir=out, profile=TINY, seed=3), out


def read_maf(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", comment="#", low_memory=False)


def test_expression_is_genes_by_tcga_samples(cohort):
    patients, meta, out = cohort
    expr = pd.read_csv(out / meta["files"]["expression"], sep="\t", index_col=0)
    assert expr.index.name == "Hugo_Symbol"
    assert list(expr.index) == meta["genes"] and len(meta["genes"]) == TINY.n_genes
    assert set(PLANTED) <= set(expr.index)
    assert all(ALIQUOT.match(c) for c in expr.columns), expr.columns[:3]
    assert {c[:12] for c in expr.columns} == {p.patient_id for p in patients if p.has_expression}
    assert list(expr.columns) == meta["samples"]["expression"]
    values = expr.to_numpy(dtype=float)
    assert (values >= 0).all() and (values == 0).any(), "non-negative, with some dropout zeros"
    medians = np.median(values, axis=1)
    assert medians.max() / medians[medians > 0].min() > 1000, "gene means span orders of magnitude"


def test_maf_parses_with_standard_columns(cohort):
    patients, meta, out = cohort
    path = out / meta["files"]["mutations"]
    assert path.read_text().splitlines()[0] == "#version 2.4"
    maf = read_maf(path)
    assert set(STANDARD_MAF) <= set(maf.columns) and list(maf.columns) == list(MAF_COLUMNS)
    assert maf["Start_Position"].dtype.kind == "i" and (maf["End_Position"] >= maf["Start_Position"]).all()
    assert all(ALIQUOT.match(b) for b in maf["Tumor_Sample_Barcode"].unique())
    assert maf["Matched_Norm_Sample_Barcode"].str.contains(r"-10A-").all()
    with_data = {p.patient_id for p in patients if p.has_mutations}
    assert set(maf["Tumor_Sample_Barcode"].str[:12]) <= with_data
    classes = set(maf["Variant_Classification"])
    assert {"Silent", "Missense_Mutation", "3'UTR", "Intron"} <= classes
    assert set(maf.loc[maf["Variant_Classification"] == "Silent", "IMPACT"]) == {"LOW"}
    assert set(maf.loc[maf["Variant_Classification"].isin(["Intron", "3'UTR"]), "IMPACT"]) == {"MODIFIER"}
    assert (maf["t_alt_count"] <= maf["t_depth"]).all()


def test_driver_calls_are_deleterious_exactly_for_carriers(cohort):
    patients, meta, out = cohort
    maf = read_maf(out / meta["files"]["mutations"])
    maf["patient_id"] = maf["Tumor_Sample_Barcode"].str[:12]
    in_drivers = maf[maf["Hugo_Symbol"].isin(DRIVER_MUTATIONS)]
    deleterious = in_drivers[(in_drivers["Variant_Classification"] != "Silent")
                             & in_drivers["IMPACT"].isin(["HIGH", "MODERATE"])]
    called = set(zip(deleterious["patient_id"], deleterious["Hugo_Symbol"]))
    truth = {(p.patient_id, g) for p in patients if p.has_mutations for g, m in p.mutations.items() if m}
    assert called == truth and len(truth) > 30
    # A naive "any call in the gene" caller is wrong: decoys sit in non-carriers.
    naive = set(zip(in_drivers["patient_id"], in_drivers["Hugo_Symbol"]))
    decoys = {(d["patient_id"], d["gene"]) for d in meta["decoy_calls"]}
    assert naive - truth == decoys and decoys
    assert {d["class"] for d in meta["decoy_calls"]} >= {"Silent"}
    assert meta["mutation_effects"] == {g: e for g, (_, e) in DRIVER_MUTATIONS.items()}


def test_cnv_is_thresholded_and_drivers_match_truth(cohort):
    patients, meta, out = cohort
    cnv = pd.read_csv(out / meta["files"]["cnv"], sep="\t", index_col=0)
    assert cnv.index.name == "Gene Symbol" and list(cnv.index) == meta["genes"]
    assert set(np.unique(cnv.to_numpy())) <= {-2, -1, 0, 1, 2}
    by_id = {p.patient_id: p for p in patients}
    assert {c[:12] for c in cnv.columns} == {p.patient_id for p in patients if p.has_cnv}
    for col in cnv.columns:
        for gene in DRIVER_CNV:
            assert cnv.at[gene, col] == by_id[col[:12]].cnv[gene], (gene, col)
    background = cnv.drop(index=list(DRIVER_CNV))
    assert (background != 0).to_numpy().mean() > 0.02, "random background events exist"
    assert meta["cnv_effects"]["MYC"] == {"direction": 2, "log_hazard": DRIVER_CNV["MYC"][2]}


def test_gmt_holds_planted_weak_noise_and_pathway_sets(cohort):
    _, meta, out = cohort
    lines = (out / meta["files"]["signatures"]).read_text().splitlines()
    gmt = {f[0]: f[2:] for f in (line.split("\t") for line in lines)}
    assert all(line.split("\t")[1].startswith("http") for line in lines)
    assert len(gmt) >= 20 and list(gmt) == list(meta["signatures"])
    signals = {name: s["signal"] for name, s in meta["signatures"].items()}
    assert signals["SIG_PROLIFERATION"] == "survival_harmful"
    assert signals["SIG_IMMUNE_CYTOLYTIC"] == "survival_protective"
    assert signals["SIG_SQUAMOUS_DIFFERENTIATION"] == signals["SIG_ADENO_DIFFERENTIATION"] == "subtype"
    assert sum(s == "none" for s in signals.values()) >= TINY.n_noise_signatures
    assert 2 <= sum(s == "weak" for s in signals.values()) < len(signals) // 2
    pathways = [n for n in gmt if n.startswith(("KEGG_", "REACTOME_"))]
    assert len(pathways) == TINY.n_pathways
    genes = set(meta["genes"])
    for name, sig in meta["signatures"].items():
        assert gmt[name] == sig["genes"] and sig["genes_found"] == [g for g in sig["genes"] if g in genes]
        if sig["signal"] == "none":
            assert not set(sig["genes"]) & set(PLANTED) and sig["loading"] == 0.0
    # Real GMTs name genes the platform lacks.
    assert "CDC20" in gmt["SIG_PROLIFERATION"] and "CDC20" not in genes
    assert sum(len(s["genes"]) > len(s["genes_found"]) for s in meta["signatures"].values()) > 10


def test_planted_expression_signal_is_measurable(cohort):
    patients, meta, out = cohort
    expr = pd.read_csv(out / meta["files"]["expression"], sep="\t", index_col=0)
    log_expr = np.log1p(expr)
    by_id = {p.patient_id: p for p in patients}
    pts = [by_id[c[:12]] for c in expr.columns]
    z_prolif = [p.z_prolif for p in pts]
    risk = [p.risk for p in pts]
    time_days = [p.time_days for p in pts]
    assert meta["planted_genes"]["MKI67"]["factor"] == "z_prolif"
    assert spearmanr(log_expr.loc["MKI67"], z_prolif)[0] > 0.7
    prolif = log_expr.loc[meta["signatures"]["SIG_PROLIFERATION"]["genes_found"]].mean()
    assert spearmanr(prolif, z_prolif)[0] > 0.9
    # Harmful: higher proliferation, higher risk and shorter time (risk has four other parts).
    assert spearmanr(prolif, risk)[0] > 0.2 and spearmanr(prolif, time_days)[0] < -0.1
    immune = log_expr.loc[meta["signatures"]["SIG_IMMUNE_CYTOLYTIC"]["genes_found"]].mean()
    assert spearmanr(immune, risk)[0] < -0.2
    noise = [g for g in meta["genes"] if g not in meta["planted_genes"]]
    rho = np.array([spearmanr(log_expr.loc[g], z_prolif)[0] for g in noise])
    assert np.median(np.abs(rho)) < 0.1 and abs(rho.mean()) < 0.05
    squamous = np.array([p.subtype == "squamous_cell" for p in pts])
    adeno = np.array([p.subtype == "adenocarcinoma" for p in pts])
    assert log_expr.loc["KRT5", squamous].mean() - log_expr.loc["KRT5", ~squamous].mean() > 1.5
    assert log_expr.loc["NKX2-1", adeno].mean() - log_expr.loc["NKX2-1", ~adeno].mean() > 1.5


def test_malformed_rows_are_written_and_documented(tiny):
    patients, meta, out = tiny
    rows = {r["patient_id"]: r for r in meta["corrupt_rows"]}
    assert set(rows) == {patients[2].patient_id, patients[3].patient_id}

    maf_row = rows[patients[2].patient_id]
    assert maf_row["file"] == "mutations.maf" and maf_row["column"] == "Start_Position"
    fields = (out / "mutations.maf").read_text().splitlines()[maf_row["line"] - 1].split("\t")
    assert fields[MAF_COLUMNS.index("Start_Position")] == "NA?" and len(fields) < len(MAF_COLUMNS)
    assert fields[MAF_COLUMNS.index("Tumor_Sample_Barcode")].startswith(patients[2].patient_id)
    maf = read_maf(out / "mutations.maf")  # still parses; the bad row shows as non-numeric
    bad = pd.to_numeric(maf["Start_Position"], errors="coerce").isna()
    assert bad.sum() == 1 and maf.loc[bad, "Hugo_Symbol"].item() == maf_row["gene"]

    expr_row = rows[patients[3].patient_id]
    assert expr_row["file"] == "expression.tsv" and expr_row["value"] == "NA?"
    lines = (out / "expression.tsv").read_text().splitlines()
    header, line = lines[0], lines[expr_row["line"] - 1]
    cells = dict(zip(header.split("\t"), line.split("\t")))
    assert cells["Hugo_Symbol"] == expr_row["gene"] and cells[expr_row["column"]] == "NA?"


def test_same_seed_same_bytes(tiny, tmp_path):
    patients, _, out = tiny
    write_genomics(patients, out_dir=tmp_path / "a", profile=TINY, seed=3)
    write_genomics(patients, out_dir=tmp_path / "b", profile=TINY, seed=4)
    for name in ("expression.tsv", "mutations.maf", "cnv.tsv", "signatures.gmt"):
        assert (tmp_path / "a" / name).read_bytes() == (out / name).read_bytes(), name
    assert (tmp_path / "b" / "expression.tsv").read_bytes() != (out / "expression.tsv").read_bytes()


def test_too_few_genes_is_a_config_error(tmp_path):
    small = dataclasses.replace(TINY, n_genes=60)
    with pytest.raises(ConfigError, match="n_genes") as info:
        write_genomics(sample_patients(4, profile=small, seed=0), out_dir=tmp_path, profile=small, seed=0)
    assert isinstance(info.value, MmrayError)
