"""GDC STAR-counts per-sample files plus a sample sheet -> samples x genes."""

from __future__ import annotations

import numpy as np
import pytest
from tables_testdata import STAR_GENES as GENES
from tables_testdata import STAR_SAMPLES as SAMPLES
from tables_testdata import star_values as _values
from tables_testdata import write_star_cohort

from mmray.errors import CohortError
from mmray.features.star_counts import read_star_counts, read_star_file


def test_single_file_parses_values_and_skips_qc_rows(tmp_path):
    files = write_star_cohort(tmp_path / "star")
    frame, failures, qc = read_star_file(str(files[SAMPLES[0]]), value="unstranded")
    assert failures == []
    assert qc == {"N_unmapped": 1000, "N_multimapping": 1001, "N_noFeature": 1002, "N_ambiguous": 1003}
    assert list(frame["gene_id"]) == [g[0] for g in GENES]
    assert frame["value"].tolist() == [float(_values(0, g)[0]) for g in range(len(GENES))]


@pytest.mark.parametrize("via", ["folder", "sheet", "folder+explicit sheet"])
def test_folder_or_sheet_gives_samples_x_genes(tmp_path, via):
    root = tmp_path / "star"
    write_star_cohort(root)
    sheet = root / "gdc_sample_sheet.2024-05-01.tsv"
    if via == "folder":
        m = read_star_counts(str(root))
    elif via == "sheet":
        m = read_star_counts(str(sheet))
    else:
        m = read_star_counts(str(root), sample_sheet=str(sheet))
    assert list(m.values.index) == SAMPLES
    # default gene_name naming: the two TP53 ids stay two columns (collapsed later by policy)
    assert list(m.values.columns) == ["EGFR", "KRAS", "TP53", "HOTAIR", "TP53"]
    expected = np.array([[_values(s, g)[3] for g in range(len(GENES))] for s in range(len(SAMPLES))])
    np.testing.assert_allclose(m.values.to_numpy(), expected, atol=5e-5)
    assert m.failures == []
    assert len([s for s in m.sources if s.endswith("star_gene_counts.tsv")]) == 3


def test_value_column_gene_ids_and_gene_types(tmp_path):
    root = tmp_path / "star"
    write_star_cohort(root)
    m = read_star_counts(str(root), value="unstranded", gene_id="gene_id", gene_types=("protein_coding",))
    assert list(m.values.columns) == [g[0] for g in GENES[:3]]
    assert m.values.loc[SAMPLES[2], "ENSG00000141510.18"] == _values(2, 2)[0]


def test_bad_value_and_unlisted_file_are_failures_not_crashes(tmp_path):
    root = tmp_path / "star"
    files = write_star_cohort(root, bad_tpm=True, extra_unlisted=True)
    m = read_star_counts(str(root))
    assert np.isnan(m.values.loc[SAMPLES[1], "KRAS"])
    assert m.values.loc[SAMPLES[1], "EGFR"] == pytest.approx(_values(1, 0)[3], abs=5e-5)
    bad = next(f for f in m.failures if f.get("value") == "n/a?")
    # line: comment (1), header (2), 4 QC rows (3-6), EGFR (7), KRAS (8)
    assert (bad["file"], bad["line"], bad["column"], bad["sample"]) == (files[SAMPLES[1]].name, 8,
                                                                       "tpm_unstranded", SAMPLES[1])
    stray = next(f for f in m.failures if f["item"].startswith("stray"))
    assert "not listed in the sample sheet" in stray["reason"]


def test_without_sample_sheet_the_error_says_how_to_fix(tmp_path):
    root = tmp_path / "star"
    write_star_cohort(root)
    (root / "gdc_sample_sheet.2024-05-01.tsv").unlink()
    with pytest.raises(CohortError, match="sample_sheet"):
        read_star_counts(str(root))


def test_sample_sheet_without_needed_columns_is_named(tmp_path):
    root = tmp_path / "star"
    write_star_cohort(root)
    sheet = tmp_path / "sheet.tsv"
    sheet.write_text("File Name\tCase\nx.tsv\tTCGA-05-4244\n")
    with pytest.raises(CohortError, match="sheet.tsv.*Sample ID"):
        read_star_counts(str(root), sample_sheet=str(sheet))
