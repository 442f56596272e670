"""Proteins, prior knowledge and treatment labels: values vs the synthetic files, maps, failures, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tables_testdata import patients_by_id, write_tables_cohort

from mmray.errors import CohortError
from mmray.features.interactions import read_interactions
from mmray.ingest.pseudonym import identity
from mmray.ingest.run import IngestConfig, run_ingest
from mmray.ingest.tables_proteins import gene_of_protein
from mmray.store import FeatureStore
from mmray.store.knowledge import read_knowledge

MODS = ("clinical", "proteins", "knowledge")


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    truth = write_tables_cohort(out, patients=24, seed=2)
    store = str(tmp_path_factory.mktemp("store") / "fs")
    reports = run_ingest(IngestConfig(cohort=str(out / "cohort.yaml"), store=store, modalities=MODS),
                         patient_key=identity, progress=lambda _: None)
    return out, truth, FeatureStore(store), {r.modality: r for r in reports}


def test_proteins_group_holds_the_file_values_and_the_gene_map(ingested):
    out, truth, store, reports = ingested
    raw = pd.read_csv(out / "proteins.tsv", sep="\t", index_col=0)
    group = store.read_table("proteins").set_index("patient_id")
    assert len(group) == len(raw) == sum(p["has_proteins"] for p in truth["patients"])
    for barcode, row in raw.iloc[:5].iterrows():
        np.testing.assert_allclose(group.loc[barcode[:12], row.index].to_numpy(float), row.to_numpy(), atol=1e-4)
    genes = store.manifest("proteins")["params"]["protein_genes"]
    assert genes["Cyclin_B1"] == "CCNB1" and genes["LKB1"] == "STK11" and genes["EGFR_pY1068"] == "EGFR"
    assert store.manifest("proteins")["params"]["gene_source"] == "gene_map"
    # planted: Ki-67 follows z_prolif (the proliferation factor of its gene's mRNA), background proteins do not
    z = {pid[:12]: p["z_prolif"] for pid, p in patients_by_id(truth).items()}
    zp = group.index.map(z).to_numpy(float)
    assert np.corrcoef(zp, group["Ki-67"])[0, 1] > 0.6
    noise = next(c for c in group.columns if c not in truth["proteins"]["planted"] and c != "event_time")
    assert abs(np.corrcoef(zp, group[noise])[0, 1]) < 0.6


def test_knowledge_tables_with_lineage(ingested):
    out, truth, store, reports = ingested
    edges, meta = read_knowledge(store, "interactions")
    raw = pd.read_csv(out / "interactions.tsv", sep="\t")
    assert len(edges) == len(raw) and set(edges["type"]) == {"ppi", "regulates"}
    planted = {(e["source"], e["target"]) for e in truth["interactions"]["planted"] if e["type"] == "regulates"}
    got = set(zip(edges.loc[edges["type"] == "regulates", "source"], edges.loc[edges["type"] == "regulates", "target"]))
    assert planted <= got
    assert meta["sources"][0]["sha256"] and meta["rows"] == len(edges)
    sets, _ = read_knowledge(store, "gene_sets")
    assert set(sets.loc[sets["set_name"] == "SIG_PROLIFERATION", "gene"]) >= {"MKI67", "CCNB1"}
    assert reports["knowledge"].n_done == 2
    again = run_ingest(IngestConfig(cohort=str(out / "cohort.yaml"), store=store.uri, modalities=("knowledge",)),
                       patient_key=identity, progress=lambda _: None)[0]
    assert again.n_skipped == 2 and again.n_done == 0  # unchanged files: nothing rewritten


def test_treatment_labels(ingested):
    out, truth, store, reports = ingested
    labels = store.read_table("labels").set_index("patient_id")
    mapping = store.manifest("labels")["params"]["response_mapping"]
    for pid, p in patients_by_id(truth).items():
        if pid not in labels.index:
            continue
        row = labels.loc[pid]
        assert (row["response"] if pd.notna(row["response"]) else None) == p["response"]
        if p["response"] is not None:
            assert row["response_code"] == mapping[p["response"]]
        for col, hit in p["toxicity"].items():
            assert row[f"toxicity_{col}"] == int(hit)
    clinical = set(store.read_table("clinical").columns)
    assert not any(c.startswith(("best_response", "grade3plus")) for c in clinical)  # labels are never features


def test_interactions_reader_handles_string_scores_bad_rows_and_loops(tmp_path):
    p = tmp_path / "string.tsv"
    p.write_text("protein1\tprotein2\tcombined_score\nTP53\tMDM2\t999\nMDM2\tTP53\t700\n\tX\t500\nA\tB\thigh\n"
                 "C\tC\t900\nD\tE\t150\n")
    edges, failures, notes = read_interactions(str(p))
    assert edges.to_dict("records") == [{"source": "D", "target": "E", "type": "ppi", "score": 0.15},
                                        {"source": "MDM2", "target": "TP53", "type": "ppi", "score": 0.999}]
    assert sorted(f["line"] for f in failures) == [4, 5]
    assert any("self-interaction" in n for n in notes) and any("1000" in n for n in notes)
    bad = tmp_path / "bad.tsv"
    bad.write_text("from_gene\tto_gene\nA\tB\n")
    with pytest.raises(CohortError, match="source"):
        read_interactions(str(bad))


def test_protein_gene_from_a_column_or_the_name(tmp_path):
    assert gene_of_protein("AKT1_pS473") == "AKT1" and gene_of_protein("MAPK1-pT202_Y204") == "MAPK1"
    assert gene_of_protein("Cyclin_B1") == "Cyclin_B1"
    out = tmp_path / "c"
    write_tables_cohort(out, patients=8, seed=1)
    raw = pd.read_csv(out / "proteins.tsv", sep="\t", index_col=0).T
    genes = pd.read_csv(out / "protein_map.tsv", sep="\t").set_index("protein")["gene"]
    raw.insert(0, "gene_symbol", genes.reindex(raw.index).to_numpy())
    raw.index.name = "antibody"
    raw.to_csv(out / "rppa_t.tsv", sep="\t")
    spec = (out / "cohort.yaml").read_text().replace(
        "  path: proteins.tsv\n  orientation: samples_x_proteins\n  gene_map: protein_map.tsv",
        "  path: rppa_t.tsv\n  orientation: proteins_x_samples\n  gene_column: gene_symbol")
    (out / "cohort.yaml").write_text(spec)
    store = str(tmp_path / "s")
    run_ingest(IngestConfig(cohort=str(out / "cohort.yaml"), store=store, modalities=("proteins",)),
               patient_key=identity, progress=lambda _: None)
    man = FeatureStore(store).manifest("proteins")
    assert man["params"]["gene_source"] == "gene_column" and man["params"]["protein_genes"]["Ki-67"] == "MKI67"
    assert "gene_symbol" not in FeatureStore(store).read_table("proteins").columns


def test_a_toxicity_value_that_matches_nothing_names_the_column(tmp_path):
    out = tmp_path / "c"
    write_tables_cohort(out, patients=8, seed=1)
    (out / "cohort.yaml").write_text((out / "cohort.yaml").read_text().replace("toxicity_value: 'Yes'",
                                                                             "toxicity_value: 'G3'"))
    with pytest.raises(CohortError, match="grade3plus_neutropenia.*toxicity_value"):
        run_ingest(IngestConfig(cohort=str(Path(out) / "cohort.yaml"), store=str(tmp_path / "s"),
                                modalities=("clinical",)), patient_key=identity, progress=lambda _: None)
