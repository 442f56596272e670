"""The generative model: determinism, coverage of cases, corruption placement."""

from __future__ import annotations

import numpy as np
import pytest

from mmray.errors import UnknownNameError
from mmray.synth.latent import (CORRUPTION_KINDS, DRIVER_MUTATIONS, assign_corruptions, sample_patients)
from mmray.synth.profiles import PROFILES, get_profile

TINY = get_profile("tiny")


def test_same_seed_same_patients():
    a = sample_patients(20, profile=TINY, seed=4)
    b = sample_patients(20, profile=TINY, seed=4)
    c = sample_patients(20, profile=TINY, seed=5)
    assert [p.risk for p in a] == [p.risk for p in b]
    assert [p.risk for p in a] != [p.risk for p in c]


def test_barcodes_are_tcga_style_and_unique():
    patients = sample_patients(50, profile=TINY, seed=0)
    ids = [p.patient_id for p in patients]
    assert len(set(ids)) == 50
    assert all(len(i) == 12 and i.startswith("TCGA-") for i in ids)
    assert patients[0].sample_barcode == ids[0] + "-01A"


def test_small_cohorts_cover_every_case():
    patients = sample_patients(8, profile=TINY, seed=1)
    assert any(p.n_slides == 2 for p in patients)
    assert any(p.n_slides == 0 for p in patients)
    assert any(not p.has_ct for p in patients)
    assert any(not p.has_expression for p in patients)
    assert all(p.n_slides and p.has_ct and p.has_expression for p in patients[:2])


def test_mutation_factor_is_standardised_and_follows_drivers():
    patients = sample_patients(3000, profile=get_profile("demo"), seed=2)
    z = np.array([p.z_mutation for p in patients])
    assert abs(z.mean()) < 0.1 and abs(z.std() - 1) < 0.1
    stk11 = np.array([p.mutations["STK11"] for p in patients])
    egfr = np.array([p.mutations["EGFR"] for p in patients])
    assert z[stk11].mean() > z[~stk11].mean()  # harmful driver
    assert z[egfr].mean() < z[~egfr].mean()  # protective driver
    assert abs(stk11.mean() - DRIVER_MUTATIONS["STK11"][0]) < 0.03


def test_corruptions_cycle_kinds_and_spare_first_patients():
    patients = sample_patients(12, profile=TINY, seed=3)
    entries = assign_corruptions(patients, 6, seed=3)
    kinds = [e["kind"] for e in entries]
    assert kinds[:4] == list(CORRUPTION_KINDS) and len(entries) == 6
    assert not patients[0].corruptions and not patients[1].corruptions
    for e in entries:
        p = next(p for p in patients if p.patient_id == e["patient_id"])
        assert e["kind"] in p.corruptions


def test_too_many_corruptions_is_a_clear_error():
    patients = sample_patients(3, profile=TINY, seed=3)
    with pytest.raises(ValueError, match="cannot place corruption"):
        assign_corruptions(patients, 5, seed=0)


def test_unknown_profile_lists_valid_ones():
    with pytest.raises(UnknownNameError, match="valid profiles: demo, large, tiny"):
        get_profile("huge")
    assert get_profile("demo").slide_width_px >= 8192, "demo slides hold several 4096-px regions"
    assert all(p.slide_levels >= 3 for p in PROFILES.values())
