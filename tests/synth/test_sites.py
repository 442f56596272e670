"""Splitting a cohort into sites by tissue source site: each site's files hold its own patients only."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from mmray.cohort import load_cohort
from mmray.errors import DataError
from mmray.synth.sites import _group_codes, split_sites
from mmray.synth.survival_store import write_survival_cohort


def test_codes_are_packed_largest_first_into_the_lightest_site():
    assert _group_codes({"05": 52, "38": 37, "44": 38, "55": 23}, 3) == [["05"], ["44"], ["38", "55"]]
    with pytest.raises(DataError, match="cannot split"):
        _group_codes({"05": 3}, 2)


def test_split_sites_writes_each_site_its_own_rows(tmp_path):
    cohort = write_survival_cohort(tmp_path / "c", patients=40, seed=3)
    spec = yaml.safe_load(cohort.read_text())
    spec.update(mutations="mutations.maf", cnv="cnv.tsv")
    cohort.write_text(yaml.safe_dump(spec))
    clinical = pd.read_csv(tmp_path / "c" / "clinical.csv", dtype=str)
    sites = split_sites(tmp_path / "c", 3)
    assert len(sites) == 3 and sum(s["patients"] for s in sites.values()) == len(clinical)
    seen = set()
    for name, site in sites.items():
        c = load_cohort(site["cohort"])
        mine = pd.read_csv(c.part_path("clinical"), dtype=str)
        codes = set(mine["tissue_source_site"])
        assert codes == set(site["codes"]) and name == "tss" + "_".join(sorted(codes))
        ids = set(mine["case_submitter_id"])
        assert not ids & seen
        seen |= ids
        expr = pd.read_csv(c.part_path("expression"), sep="\t", nrows=1)
        assert {col[:12] for col in expr.columns[1:]} <= ids and len(expr.columns) > 1
        maf = pd.read_csv(c.part_path("mutations"), sep="\t", comment="#", dtype=str)
        assert set(maf["Tumor_Sample_Barcode"].str[:12]) <= ids
        cnv = pd.read_csv(c.part_path("cnv"), sep="\t", nrows=1)
        assert {col[:12] for col in cnv.columns[1:]} <= ids
    assert seen == set(clinical["case_submitter_id"])
