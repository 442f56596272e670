"""Expression and CNV matrices: formats, orientation detection, malformed cells, synthetic truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mmray.errors import CohortError
from mmray.features.omics_io import detect_orientation, read_matrix
from mmray.synth.genomics import write_genomics
from mmray.synth.latent import sample_patients
from mmray.synth.profiles import get_profile

BARCODES = ["TCGA-05-4244-01A-01R-1107-07", "TCGA-05-4249-01A-01R-1107-07", "TCGA-05-4250-01A-01R-1107-07"]
GENES = ["EGFR", "KRAS", "TP53", "MKI67"]
VALUES = np.array([[1.5, 0.0, 20.25], [3.0, 4.5, 0.75], [100.0, 7.0, 8.0], [0.5, 0.25, 9.0]])  # genes x samples


def _expected() -> pd.DataFrame:
    return pd.DataFrame(VALUES.T, index=BARCODES, columns=GENES)


def _check(m, orientation):
    assert m.orientation == orientation
    pd.testing.assert_frame_equal(m.values, _expected(), check_names=False)
    assert m.failures == []


def test_genes_x_samples_tsv_detected(tmp_path):
    path = tmp_path / "expr.tsv"
    frame = pd.DataFrame(VALUES, index=pd.Index(GENES, name="Hugo_Symbol"), columns=BARCODES)
    frame.to_csv(path, sep="\t")
    _check(read_matrix(str(path)), "genes_x_samples")


def test_samples_x_genes_csv_detected(tmp_path):
    path = tmp_path / "expr.csv"
    _expected().rename_axis("sample").to_csv(path)
    _check(read_matrix(str(path)), "samples_x_genes")


@pytest.mark.parametrize("orientation", ["genes_x_samples", "samples_x_genes"])
def test_parquet_both_orientations_with_and_without_index(tmp_path, orientation):
    frame = _expected() if orientation == "samples_x_genes" else _expected().T
    with_index = tmp_path / "a.parquet"
    frame.rename_axis("id").to_parquet(with_index)
    as_column = tmp_path / "b.parquet"
    frame.rename_axis("id").reset_index().to_parquet(as_column, index=False)
    for path in (with_index, as_column):
        _check(read_matrix(str(path)), orientation)


def test_clinical_ids_decide_orientation_for_plain_ids(tmp_path):
    ids = ["R01-001", "R01-002", "R01-003"]
    path = tmp_path / "expr.tsv"
    pd.DataFrame(VALUES, index=pd.Index(GENES, name="gene"), columns=ids).to_csv(path, sep="\t")
    m = read_matrix(str(path), known_ids={"R01-001", "R01-002", "R01-003", "R01-004"})
    assert m.orientation == "genes_x_samples"
    assert list(m.values.index) == ids


def test_ensembl_rows_decide_orientation():
    assert detect_orientation(["ENSG00000146648.18", "ENSG00000133703.12"], ["S1", "S2"]) == "genes_x_samples"
    assert detect_orientation(["S1", "S2"], ["ENSG00000146648", "ENSG00000133703"]) == "samples_x_genes"


def test_ambiguous_orientation_names_file_and_setting(tmp_path):
    path = tmp_path / "mystery.tsv"
    pd.DataFrame(VALUES[:, :2], index=pd.Index(GENES, name="id"), columns=["S1", "S2"]).to_csv(path, sep="\t")
    with pytest.raises(CohortError) as err:
        read_matrix(str(path))
    msg = str(err.value)
    assert "mystery.tsv" in msg and "expression.orientation" in msg and "genes_x_samples" in msg
    m = read_matrix(str(path), orientation="genes_x_samples")  # the fix the message names works
    assert list(m.values.index) == ["S1", "S2"]


def test_malformed_cells_and_short_rows_are_named_and_the_rest_kept(tmp_path):
    path = tmp_path / "expr.tsv"
    lines = ["gene\t" + "\t".join(BARCODES), "EGFR\t1.5\t3.0\t100", "KRAS\t0\tNA?\t7", "TP53\t20.25\t0.75",
             "MKI67\t0.5\t0.25\t9", "MYC\tNA\t2\t3"]
    path.write_text("\n".join(lines) + "\n")
    m = read_matrix(str(path))
    assert list(m.values.columns) == ["EGFR", "KRAS", "MKI67", "MYC"]  # TP53 (short row) dropped
    assert np.isnan(m.values.loc[BARCODES[1], "KRAS"])  # the bad cell is missing ...
    assert m.values.loc[BARCODES[2], "KRAS"] == 7.0  # ... the rest of its row is kept
    assert np.isnan(m.values.loc[BARCODES[0], "MYC"])  # 'NA' is a missing token, not a failure
    cell = next(f for f in m.failures if f.get("value") == "NA?")
    assert (cell["file"], cell["line"], cell["column"], cell["feature"]) == ("expr.tsv", 3, BARCODES[1], "KRAS")
    assert "expr.tsv line 3" in cell["reason"]
    short = next(f for f in m.failures if f["line"] == 4)
    assert "3 of 4 fields" in short["reason"] and "TP53" in short["reason"]
    assert len(m.failures) == 2


def test_annotation_columns_are_not_samples(tmp_path):
    path = tmp_path / "cnv.tsv"
    frame = pd.DataFrame(VALUES.round(), index=pd.Index(GENES, name="Gene Symbol"), columns=BARCODES)
    frame.insert(0, "Cytoband", ["7p11.2", "12p12.1", "17p13.1", "10q26.2"])
    frame.insert(0, "Locus ID", [1956, 3845, 7157, 4288])
    frame.to_csv(path, sep="\t")
    m = read_matrix(str(path), what="cnv")
    assert list(m.values.index) == BARCODES
    assert any("Locus ID" in n and "Cytoband" in n for n in m.notes)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Tiny genomics; patient 3 has expression but no MAF, so its malformed row lands in expression.tsv."""
    profile = get_profile("tiny")
    patients = sample_patients(8, profile=profile, seed=11)
    patients[3].has_mutations, patients[3].has_expression = False, True
    patients[3].has_cnv = True
    patients[3].corruptions.append("malformed_table_row")
    out = tmp_path_factory.mktemp("genomics")
    truth = write_genomics(patients, out_dir=out, profile=profile, seed=11)
    return patients, truth, out


def test_synthetic_expression_corrupt_cell_matches_truth(synth):
    patients, truth, out = synth
    m = read_matrix(str(out / "expression.tsv"))
    bad = [r for r in truth["corrupt_rows"] if r["file"] == "expression.tsv"]
    assert len(bad) == 1
    got = [(f["file"], f["line"], f["column"], f["value"]) for f in m.failures]
    assert got == [(b["file"], b["line"], b["column"], b["value"]) for b in bad]
    assert m.values.shape == (len(truth["samples"]["expression"]), len(truth["genes"]))
    assert np.isnan(m.values.loc[bad[0]["column"], bad[0]["gene"]])
    assert m.values.notna().sum().sum() == m.values.size - 1


def test_synthetic_cnv_driver_calls_match_truth(synth):
    patients, truth, out = synth
    m = read_matrix(str(out / "cnv.tsv"), what="cnv")
    assert m.failures == [] and m.orientation == "genes_x_samples"
    by_patient = {s[:12]: s for s in m.values.index}
    checked = 0
    for p in patients:
        if not p.has_cnv:
            assert p.patient_id not in by_patient
            continue
        for gene, call in p.cnv.items():
            assert m.values.loc[by_patient[p.patient_id], gene] == call
            checked += 1
    assert checked >= 10
    assert set(np.unique(m.values.to_numpy())) <= {-2.0, -1.0, 0.0, 1.0, 2.0}
