"""The whole synthetic cohort: spec, manifest, truth.json, corruptions, determinism, CLI."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lifelines.utils import concordance_index

from mmray.cli import main
from mmray.cohort import load_cohort
from mmray.synth.cohort import write_cohort
from mmray.synth.latent import CORRUPTION_KINDS, sample_patients
from mmray.synth.profiles import get_profile


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    write_cohort(out, patients=8, seed=1, profile="tiny", corrupt=4)
    return out


def digest_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow  # the module fixture writes a whole cohort (~20 s)
def test_spec_loads_and_names_every_part(tiny):
    cohort = load_cohort(tiny / "cohort.yaml")
    assert cohort.modalities() == ["clinical", "expression", "mutations", "cnv", "proteins", "knowledge", "wsi", "ct"]
    assert cohort.spec.labels.event_value == "Dead"
    manifest = cohort.manifest()
    truth = json.loads((tiny / "truth.json").read_text())
    assert (manifest["modality"] == "wsi").sum() == len(truth["slides"])
    assert (manifest["modality"] == "ct").sum() == len(truth["ct"])
    assert all(Path(p).exists() for p in manifest["path"])
    clinical = pd.read_csv(cohort.part_path("clinical"))
    assert set(manifest["patient_id"]) <= set(clinical[cohort.spec.clinical.id_column])


@pytest.mark.slow  # the module fixture writes a whole cohort (~20 s)
def test_truth_records_patients_modalities_and_corruptions(tiny):
    truth = json.loads((tiny / "truth.json").read_text())
    assert truth["generator"] == {"mmray_version": truth["generator"]["mmray_version"], "profile": "tiny",
                                  "patients": 8, "seed": 1, "corrupt": 4, "slide_px": [2048, 1536]}
    patients = truth["patients"]
    assert len(patients) == 8
    assert any(p["n_slides"] == 2 for p in patients), "some patients have two slides"
    assert any(p["n_slides"] == 0 for p in patients) and any(not p["has_ct"] for p in patients)
    assert sorted(c["kind"] for c in truth["corruptions"]) == sorted(CORRUPTION_KINDS)
    for entry in truth["corruptions"]:
        if entry["kind"] == "malformed_table_row":
            assert entry["rows"], "the broken table rows are named"
        else:
            assert entry["files"] and all((tiny / f).exists() for f in entry["files"])


@pytest.mark.slow  # writes two more cohorts
def test_same_seed_same_bytes_other_seed_differs(tiny, tmp_path):
    again = tmp_path / "again"
    write_cohort(again, patients=8, seed=1, profile="tiny", corrupt=4)
    assert digest_tree(again) == digest_tree(tiny)
    other = tmp_path / "other"
    write_cohort(other, patients=8, seed=2, profile="tiny", corrupt=0)
    assert (other / "clinical.csv").read_bytes() != (tiny / "clinical.csv").read_bytes()


def test_planted_risk_drives_survival():
    patients = sample_patients(400, profile=get_profile("demo"), seed=5)
    time = np.array([p.time_days for p in patients])
    event = np.array([p.event for p in patients])
    risk = np.array([p.risk for p in patients])
    # Higher risk -> shorter survival: concordance of -risk with time is high.
    assert concordance_index(time, -risk, event) > 0.7
    # Each modality's factor alone carries part of it, and less than the whole.
    c_ct = concordance_index(time, -np.array([p.z_ct for p in patients]), event)
    assert 0.55 < c_ct < concordance_index(time, -risk, event)
    assert 0.3 < event.mean() < 0.9


@pytest.mark.slow  # writes a cohort through the CLI
def test_cli_writes_cohort_and_refuses_foreign_folder(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["synth", "--out", str(out), "--patients", "5", "--seed", "3"]) == 0
    assert "wrote 5 patients" in capsys.readouterr().out
    assert main(["validate", "--cohort", str(out / "cohort.yaml")]) == 0
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["synth", "--out", str(foreign)]) == 1
    assert "is not an mmray cohort folder" in capsys.readouterr().err


def test_a_folder_a_killed_synth_left_is_written_again(tmp_path):
    out = tmp_path / "c"  # what a run SIGKILLed while writing slides leaves: its marker, half a slide
    (out / "slides").mkdir(parents=True)
    (out / ".mmray-synth").write_text('{"profile": "tiny", "patients": 3, "seed": 2}\n')
    (out / "slides" / "half.tiff").write_bytes(b"II*\x00")
    result = write_cohort(out, patients=3, seed=2, profile="tiny")
    assert result.n_patients == 3
    truth = json.loads((out / "truth.json").read_text())
    assert truth["generator"]["seed"] == 2 and truth["generator"]["patients"] == 3
    assert load_cohort(out / "cohort.yaml").manifest()["patient_id"].nunique() == 3


def test_console_script_runs(tmp_path):
    exe = Path(sys.executable).parent / "mmray"
    proc = subprocess.run([str(exe), "synth", "--out", str(tmp_path / "c"), "--patients", "3", "--profile", "tiny"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "c" / "truth.json").exists()
