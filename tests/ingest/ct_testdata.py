"""Small synthetic CT studies (tiny profile: 64 x 64 x 24) shared by the CT ingest tests."""

from __future__ import annotations

import csv
from pathlib import Path

import yaml

from mmray.synth.ct import write_ct
from mmray.synth.latent import Patient, sample_patients
from mmray.synth.profiles import get_profile

PROFILE = get_profile("tiny")
SEED = 11


def ct_patients(n: int = 8, *, seed: int = SEED, corrupt: tuple[str, ...] = ()) -> list[Patient]:
    """Patients with CT; ``corrupt`` kinds go to the 3rd, 4th, ... of them (as assign_corruptions would)."""
    patients = [p for p in sample_patients(n, profile=PROFILE, seed=seed) if p.has_ct]
    for kind, p in zip(corrupt, patients[2:]):
        p.corruptions.append(kind)
    return patients


def write_studies(out_dir: Path, patients: list[Patient], *, seed: int = SEED) -> list[dict]:
    """Write the patients' CT + SEG under ``out_dir/ct/<patient>/``; returns the truth dicts."""
    return write_ct(patients, out_dir=Path(out_dir) / "ct", profile=PROFILE, seed=seed)


def write_cohort_spec(root: Path, studies: list[dict], *, name: str = "cohort") -> Path:
    """``<name>.yaml`` naming only a manifest (``<name>-manifest.csv``) of the studies' CT folders."""
    root = Path(root)
    manifest = f"{name}-manifest.csv"
    with (root / manifest).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["patient_id", "modality", "path"])
        for s in studies:
            writer.writerow([s["patient_id"], "ct", s["path"]])
    spec = root / f"{name}.yaml"
    spec.write_text(yaml.safe_dump({"name": "ct-test", "manifest": manifest}))
    return spec
