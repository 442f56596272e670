"""MAF -> deleterious-mutation indicators; GMT signatures; barcodes; label-free transforms."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tables_testdata import write_tables_cohort

from mmray.errors import CohortError
from mmray.features.barcodes import assign_samples, parse_sample
from mmray.features.gmt import genes_found, parse_gmt, read_gmt
from mmray.features.mutations import deleterious, mutation_indicators, read_maf
from mmray.features.omics_transform import collapse_duplicate_genes, log2p1, to_patients
from mmray.synth.latent import DRIVER_MUTATIONS


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    truth = write_tables_cohort(out, patients=12, seed=5, corrupt=4)
    return out, truth


@pytest.mark.parametrize("rule", ["classification", "impact", "auto"])
def test_indicators_match_truth_drivers_exactly_and_ignore_decoys(cohort, rule):
    out, truth = cohort
    calls, failures, samples = read_maf(str(out / "mutations.maf"))
    ind = mutation_indicators(calls, samples, rule=rule, genes=tuple(DRIVER_MUTATIONS))
    patients, _ = to_patients(ind)
    with_maf = [p for p in truth["patients"] if p["has_mutations"]]
    assert sorted(patients.index) == sorted(p["patient_id"] for p in with_maf)  # no MAF: no row (missing, not 0)
    for p in with_maf:
        for gene, mutated in p["mutations"].items():
            assert patients.loc[p["patient_id"], gene] == int(mutated), (p["patient_id"], gene)
    decoys = truth["genomics"]["decoy_calls"]
    assert decoys, "the cohort must hold decoy calls for this test to mean anything"
    for d in decoys:
        if d["patient_id"] in patients.index:
            assert patients.loc[d["patient_id"], d["gene"]] == int(
                next(p for p in with_maf if p["patient_id"] == d["patient_id"])["mutations"][d["gene"]])
    # "any call" would be wrong: some decoy gene has a call but no deleterious one
    any_call = calls.groupby("Tumor_Sample_Barcode")["Hugo_Symbol"].agg(set)
    assert any(d["gene"] in any_call.get(s, set()) for d in decoys for s in samples if s.startswith(d["patient_id"]))


def test_default_columns_are_genes_with_a_deleterious_call(cohort):
    out, _ = cohort
    calls, _, samples = read_maf(str(out / "mutations.maf"))
    ind = mutation_indicators(calls, samples)
    assert (ind.sum(axis=0) >= 1).all()
    hits = calls[calls["Variant_Classification"].isin(["Missense_Mutation", "Nonsense_Mutation", "Frame_Shift_Del",
                                                       "Frame_Shift_Ins", "In_Frame_Del", "Splice_Site"])]
    assert set(ind.columns) == set(hits["Hugo_Symbol"])
    two = mutation_indicators(calls, samples, min_samples=2)
    assert set(two.columns) == {g for g in ind.columns if ind[g].sum() >= 2}


def test_malformed_maf_row_named_with_file_line_column(cohort):
    out, truth = cohort
    expected = [r for r in truth["genomics"]["corrupt_rows"] if r["file"] == "mutations.maf"]
    assert len(expected) == 1
    calls, failures, samples = read_maf(str(out / "mutations.maf"))
    got = [(f["file"], f["line"], f["column"], f["value"]) for f in failures]
    assert got == [(r["file"], r["line"], r["column"], r["value"]) for r in expected]
    assert "21 of 23 fields" in failures[0]["reason"] and "row dropped" in failures[0]["reason"]
    assert expected[0]["line"] not in set(calls["line"])
    assert failures[0]["sample"].startswith(expected[0]["patient_id"])


def test_rules_on_hand_written_calls():
    calls = pd.DataFrame({"Hugo_Symbol": ["A", "B", "C", "D", "E", "F"],
                          "Tumor_Sample_Barcode": ["S1"] * 6,
                          "Variant_Classification": ["In_Frame_Ins", "Silent", "Translation_Start_Site",
                                                     "3'UTR", "Nonstop_Mutation", "Missense_Mutation"],
                          "IMPACT": ["MODERATE", "LOW", "HIGH", "MODIFIER", "", "LOW"]})
    assert deleterious(calls).tolist() == [True, False, True, False, True, True]
    assert deleterious(calls, rule="impact").tolist() == [True, False, True, False, False, False]
    assert deleterious(calls, rule="auto").tolist() == [True, False, True, False, True, False]
    with pytest.raises(CohortError, match="IMPACT"):
        deleterious(calls.drop(columns="IMPACT"), rule="impact")
    ind = mutation_indicators(calls, ["S1", "S2"], genes=("A", "B", "Z"))
    assert ind.to_dict("index") == {"S1": {"A": 1, "B": 0, "Z": 0}, "S2": {"A": 0, "B": 0, "Z": 0}}


def test_maf_without_required_column_names_file_and_column(tmp_path):
    path = tmp_path / "calls.maf"
    path.write_text("#version 2.4\nHugo_Symbol\tVariant_Classification\nTP53\tMissense_Mutation\n")
    with pytest.raises(CohortError, match=r"calls\.maf.*Tumor_Sample_Barcode"):
        read_maf(str(path))


def test_gmt_sets_and_genes_found_match_truth(cohort):
    out, truth = cohort
    sets, problems = read_gmt(str(out / "signatures.gmt"))
    assert problems == []
    want = truth["genomics"]["signatures"]
    assert list(sets) == list(want)
    found = genes_found(sets, truth["genomics"]["genes"])
    for name, sig in want.items():
        assert list(sets[name].genes) == sig["genes"]
        assert list(found[name]) == sig["genes_found"]
        assert sets[name].description.endswith(f"{name}.html")


def test_gmt_bad_lines_are_reported_and_skipped(tmp_path):
    text = "A\tdesc\tG1\tG2\tG1\nB\tonly-desc\n\n# comment\nA\tagain\tG3\nC\t\tG4\n"
    sets, problems = parse_gmt(text, path=str(tmp_path / "s.gmt"))
    assert {k: v.genes for k, v in sets.items()} == {"A": ("G1", "G2"), "C": ("G4",)}
    assert [(p["line"], p["file"]) for p in problems] == [(2, "s.gmt"), (5, "s.gmt")]
    assert "lists no gene" in problems[0]["reason"] and "appears again" in problems[1]["reason"]
    empty = tmp_path / "empty.gmt"
    empty.write_text("X\tno genes\n")
    with pytest.raises(CohortError, match="empty.gmt"):
        read_gmt(str(empty))


def test_barcodes_map_to_patients_preferring_primary_tumour():
    p = parse_sample("TCGA-05-4244-11A-01R-1107-07")
    assert (p.patient, p.sample_type, p.vial, p.kind) == ("TCGA-05-4244", 11, "A", "normal")
    assert parse_sample("R01-001").patient == "R01-001" and parse_sample("R01-001").kind == "unknown"
    ids = ["TCGA-05-4244-11A-01R-1107-07", "TCGA-05-4244-02A-01R-1107-07", "TCGA-05-4244-01B-01R-1107-07",
           "TCGA-05-4244-01A-02R-1107-07", "TCGA-05-4249-10A-01R-1107-07", "R01-001"]
    for order in (ids, ids[::-1]):  # deterministic whatever the file order
        a = assign_samples(order)
        assert a.chosen == {"TCGA-05-4244-01A-02R-1107-07": "TCGA-05-4244",
                            "TCGA-05-4249-10A-01R-1107-07": "TCGA-05-4249", "R01-001": "R01-001"}
        assert sorted(d["sample"] for d in a.dropped) == sorted(ids[:3])
    notes = assign_samples(ids).notes("expression")
    assert "3 extra sample(s)" in notes[0] and "kept TCGA-05-4244-01A" in notes[0]
    strict = assign_samples(ids, tumour_only=True)
    assert "TCGA-05-4249-10A-01R-1107-07" not in strict.chosen
    assert any("tumour_only" in d["reason"] for d in strict.dropped)


def test_duplicate_genes_sum_or_max_variance_and_log2():
    values = pd.DataFrame([[1.0, 2.0, 10.0, np.nan], [3.0, 4.0, 30.0, np.nan], [5.0, 0.0, 50.0, 1.0]],
                          index=["s1", "s2", "s3"], columns=["A", "B", "A", "C"])
    summed, n = collapse_duplicate_genes(values, how="sum")
    assert n == 1 and list(summed.columns) == ["A", "B", "C"]
    assert summed["A"].tolist() == [11.0, 33.0, 55.0]
    assert summed["C"].isna().tolist() == [True, True, False]  # missing everywhere stays missing
    best, _ = collapse_duplicate_genes(values, how="max_variance")
    assert best["A"].tolist() == [10.0, 30.0, 50.0] and list(best.columns) == ["B", "A", "C"]
    logged, applied = log2p1(pd.DataFrame({"g": [0.0, 1.0, 255.0]}))
    assert applied and logged["g"].tolist() == [0.0, 1.0, 8.0]
    same, applied = log2p1(pd.DataFrame({"g": [-1.0, 2.0, 3.0]}))
    assert not applied and same["g"].tolist() == [-1.0, 2.0, 3.0]
    with pytest.raises(CohortError, match="log2: never"):
        log2p1(pd.DataFrame({"g": [-1.0, 2.0]}), mode="always")
