"""Synthetic proteins, interaction network and treatment outcomes: planted as truth.json says, and on
random streams of their own (the rest of a cohort is byte-identical with or without them)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
from tables_testdata import write_tables_cohort

from mmray.synth import cohort as cohort_mod
from mmray.synth.genomics import PLANTED, gene_universe
from mmray.synth.latent import sample_patients
from mmray.synth.network import write_interactions
from mmray.synth.profiles import get_profile
from mmray.synth.proteomics import write_proteins
from mmray.synth.treatment import RESPONSES, TOXICITY_MODEL, plant_treatment


def _people(n=400, seed=5):
    people = sample_patients(n, profile=get_profile("demo"), seed=seed)
    plant_treatment(people, seed=seed)
    return people


def test_treatment_outcomes_follow_shared_and_own_factors():
    people = _people()
    resp = [p for p in people if p.response is not None]
    assert 0.03 < 1 - len(resp) / len(people) < 0.15  # ~8% not evaluated
    by = {r: [p for p in resp if p.response == r] for r in RESPONSES}
    assert all(len(v) >= 20 for v in by.values())
    for factor in ("z_immune", "z_response"):  # both push towards response
        means = [np.mean([getattr(p, factor) for p in by[r]]) for r in RESPONSES]
        assert means[0] < means[1] < means[2], (factor, means)
    for col in TOXICITY_MODEL:
        hit = np.array([p.toxicity[col] for p in people])
        assert 0.1 < hit.mean() < 0.5
        z = np.array([p.z_toxicity for p in people])
        assert z[hit].mean() - z[~hit].mean() > 0.5  # the own factor drives every toxicity
    pneu = np.array([p.toxicity["grade3plus_pneumonitis"] for p in people])
    zi = np.array([p.z_immune for p in people])
    assert zi[pneu].mean() > zi[~pneu].mean() + 0.3  # immune-related adverse event
    again = _people()
    assert [p.response for p in again] == [p.response for p in people]


def test_proteins_show_their_factors(tmp_path):
    people = _people()
    genes, _ = gene_universe(get_profile("demo").n_genes)
    truth = write_proteins(people, out_dir=tmp_path, genes=genes, seed=5)
    x = pd.read_csv(tmp_path / "proteins.tsv", sep="\t", index_col=0)
    with_p = [p for p in people if p.has_proteins]
    assert len(x) == len(with_p) and 0.65 < len(with_p) / len(people) < 0.85
    assert np.corrcoef([p.z_prolif for p in with_p], x["Ki-67"])[0, 1] > 0.7
    assert np.corrcoef([p.z_immune for p in with_p], x["CD8"])[0, 1] > 0.7
    assert np.corrcoef([p.z_response for p in with_p], x["ERCC1"])[0, 1] < -0.6
    stk11 = np.array([p.mutations["STK11"] for p in with_p])
    assert x["LKB1"][stk11].mean() < x["LKB1"][~stk11].mean() - 1.0  # LKB1 lost with STK11 mutations
    np.testing.assert_allclose(x.median().to_numpy(), 0, atol=1e-3)  # median-centred, as RPPA level 4
    gmap = pd.read_csv(tmp_path / "protein_map.tsv", sep="\t")
    assert list(gmap["protein"]) == list(x.columns) and set(gmap["gene"]) - {"ERCC1", "DPYD", "UGT1A1"} <= set(genes)
    assert set(truth["background"].values()).isdisjoint(PLANTED)


def test_network_plants_pathway_edges_and_as_many_decoys(tmp_path):
    genes, _ = gene_universe(get_profile("demo").n_genes)
    truth = write_interactions(out_dir=tmp_path, genes=genes, seed=5)
    edges = pd.read_csv(tmp_path / "interactions.tsv", sep="\t")
    assert len(edges) == truth["n_planted"] + truth["n_decoys"] and truth["n_decoys"] == truth["n_planted"] + 15
    planted = {frozenset((e["source"], e["target"])) for e in truth["planted"]}
    assert all(set(p) <= set(PLANTED) for p in planted)
    decoys = {frozenset((e["source"], e["target"])) for e in truth["decoys"]}
    assert not planted & decoys and len(decoys) == truth["n_decoys"]
    assert {"ppi", "regulates"} == set(edges["type"]) and edges["score"].between(0, 1).all()


def test_new_parts_leave_the_other_files_byte_identical(tmp_path):
    def digests(root: Path) -> dict[str, str]:
        return {f: hashlib.sha256((root / f).read_bytes()).hexdigest()
                for f in ("expression.tsv", "mutations.maf", "cnv.tsv", "signatures.gmt")}

    write_tables_cohort(tmp_path / "new", patients=20, seed=4)
    with mock.patch.object(cohort_mod, "plant_treatment", lambda *a, **k: None), \
            mock.patch.object(cohort_mod, "append_treatment_columns", lambda *a, **k: []), \
            mock.patch.object(cohort_mod, "write_proteins", lambda *a, **k: {"files": {"proteins": "", "map": ""}}), \
            mock.patch.object(cohort_mod, "write_interactions", lambda *a, **k: {"file": ""}):
        write_tables_cohort(tmp_path / "old", patients=20, seed=4)
    assert digests(tmp_path / "new") == digests(tmp_path / "old")
    new = pd.read_csv(tmp_path / "new" / "clinical.csv", dtype=str, keep_default_na=False)
    old = pd.read_csv(tmp_path / "old" / "clinical.csv", dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(new[old.columns], old)  # the same table, with the label columns appended
    assert set(new.columns) - set(old.columns) == {"best_response", *TOXICITY_MODEL}
