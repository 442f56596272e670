"""The cohort spec: parsing, shorthand, path resolution and error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmray.cohort import load_cohort
from mmray.errors import ConfigError

CLINICAL = "case_id,os_days,vital_status,histology,dx_date\nP1,100,Dead,LUAD,2010-01-01\nP2,200,Alive,LUSC,2011-02-03\n"


def make_cohort(tmp_path: Path, spec: str, *, manifest: str | None = None) -> Path:
    (tmp_path / "clinical.csv").write_text(CLINICAL)
    (tmp_path / "expr.tsv").write_text("gene\tP1\tP2\nTP53\t1\t2\n")
    (tmp_path / "slides").mkdir(exist_ok=True)
    (tmp_path / "slides" / "a.svs").write_bytes(b"x")
    (tmp_path / "ct" / "P1").mkdir(parents=True, exist_ok=True)
    (tmp_path / "manifest.csv").write_text(manifest or "patient_id,modality,path\nP1,wsi,slides/a.svs\nP1,ct,ct/P1\n")
    path = tmp_path / "cohort.yaml"
    path.write_text(spec)
    return path


GOOD = """
name: mini
manifest: manifest.csv
clinical: {path: clinical.csv, id_column: case_id}
expression: expr.tsv
labels: {time_days: os_days, event: vital_status, event_value: Dead, subtype: histology, index_date: dx_date}
"""


def test_valid_cohort_resolves_paths(tmp_path):
    cohort = load_cohort(make_cohort(tmp_path, GOOD))
    assert cohort.spec.name == "mini"
    assert cohort.spec.expression.path == "expr.tsv"  # shorthand became a reference
    assert cohort.spec.expression.orientation == "auto"
    assert cohort.part_path("clinical") == str(tmp_path.resolve() / "clinical.csv")
    manifest = cohort.manifest()
    assert list(manifest["modality"]) == ["wsi", "ct"]
    assert manifest["path"].tolist() == [str(tmp_path.resolve() / "slides/a.svs"), str(tmp_path.resolve() / "ct/P1")]
    assert cohort.modalities() == ["clinical", "expression", "wsi", "ct"]
    assert cohort.part_path("mutations") is None


def test_every_problem_names_file_field_and_fix(tmp_path):
    spec = """
manifest: manifest.csv
clinical: {path: clinical.csv, id_column: patient}
mutations: missing.maf
labels: {time_days: survival, event: vital_status, subtype: histology}
"""
    manifest = "patient_id,modality,path\nP1,wsi,slides/a.svs\n,mri,nowhere.dcm\n"
    with pytest.raises(ConfigError) as exc:
        load_cohort(make_cohort(tmp_path, spec, manifest=manifest))
    problems = exc.value.problems
    text = str(exc.value)
    assert "cohort.yaml" in text
    fields = [p for p, _ in problems]
    assert "mutations.path" in fields and "clinical.id_column" in fields and "labels.time_days" in fields
    assert any("missing.maf" in m and "remove the 'mutations' entry" in m for _, m in problems)
    assert any("set id_column to one of: case_id" in m for _, m in problems)
    line3 = [m for p, m in problems if p == "manifest (manifest.csv line 3)"]
    assert any("patient_id is empty" in m for m in line3)
    assert any("'mri' is not one of wsi, ct" in m for m in line3)
    assert any("path not found" in m for m in line3)


def test_manifest_without_required_columns(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_cohort(make_cohort(tmp_path, "manifest: manifest.csv\n", manifest="patient,file\nP1,a\n"))
    (field, message), = exc.value.problems
    assert field == "manifest"
    assert "lacks column(s) patient_id, modality, path" in message and "found: patient, file" in message


def test_structural_errors_are_collected(tmp_path):
    spec = "name: x\nlabels: {time_days: os_days}\nexpression: {path: expr.tsv, orientation: sideways}\nsurvival: 1\n"
    with pytest.raises(ConfigError) as exc:
        load_cohort(make_cohort(tmp_path, spec))
    fields = dict(exc.value.problems)
    assert "survival" in fields and "expression.orientation" in fields
    assert "give both time_days and event" in fields["labels"]


def test_labels_without_clinical_table(tmp_path):
    with pytest.raises(ConfigError, match="the cohort has no 'clinical' table"):
        load_cohort(make_cohort(tmp_path, "labels: {subtype: histology}\n"))
