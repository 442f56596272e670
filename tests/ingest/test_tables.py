"""Table ingest end to end: groups, schemas, lineage, failures, resume, join, and the CLI."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tables_testdata import TABLE_MODALITIES, patients_by_id, write_tables_cohort

from mmray.cli import main
from mmray.errors import CohortError, ConfigError
from mmray.ingest.pseudonym import identity
from mmray.ingest.run import IngestConfig, run_ingest
from mmray.store import FeatureStore, training_table
from mmray.synth.cohort import write_cohort

GROUPS = ["clinical", "cnv", "expression", "labels", "mutations", "proteins"]


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    truth = write_tables_cohort(out, patients=12, seed=0, corrupt=4)
    store_uri = str(tmp_path_factory.mktemp("store") / "fs")
    lines: list[str] = []
    reports = run_ingest(IngestConfig(cohort=str(out / "cohort.yaml"), store=store_uri), patient_key=identity,
                         progress=lines.append)
    return out, truth, FeatureStore(store_uri), reports, lines


def test_groups_and_schemas(ingested):
    out, truth, store, reports, lines = ingested
    assert store.groups() == GROUPS
    types = {g: {c["name"]: c["type"] for c in store.manifest(g)["columns"]} for g in GROUPS}
    assert types["labels"] == {"patient_id": "string", "event_time": "timestamp[us, tz=UTC]", "time_days": "double",
                               "event": "int8", "subtype": "string", "subtype_code": "int64", "response": "string",
                               "response_code": "int64", "toxicity_grade3plus_neutropenia": "int8",
                               "toxicity_grade3plus_pneumonitis": "int8", "toxicity_grade3plus_fatigue": "int8"}
    assert set(types["expression"]) - {"patient_id", "event_time"} == set(truth["genomics"]["genes"])
    assert {t for c, t in types["expression"].items() if c not in ("patient_id", "event_time")} == {"float"}
    assert {t for c, t in types["mutations"].items() if c not in ("patient_id", "event_time")} == {"int8"}
    assert {t for c, t in types["cnv"].items() if c not in ("patient_id", "event_time")} == {"float"}
    clinical = set(types["clinical"])
    assert not any(c.split("=")[0].split("__")[0] in ("overall_survival_days", "vital_status", "histology",
                                                      "cause_of_death", "followup_status_code", "date_of_death",
                                                      "date_of_last_contact", "date_of_diagnosis", "case_submitter_id")
                   for c in clinical)
    assert {"age_at_diagnosis_years", "gender=male", "gender=female", "weight_lbs", "weight_lbs__missing"} <= clinical
    assert any(c.startswith("ajcc_pathologic_stage=Stage ") for c in clinical)
    assert [r.modality for r in reports] == list(TABLE_MODALITIES)
    assert [ln for ln in lines if ln.startswith("==>")] == [f"==> ingest {m}" for m in TABLE_MODALITIES]


def test_values_match_the_sources(ingested):
    out, truth, store, _, _ = ingested
    people = patients_by_id(truth)
    expr = store.read_table("expression").set_index("patient_id")
    assert sorted(expr.index) == sorted(p for p, t in people.items() if t["has_expression"])
    raw = pd.read_csv(out / "expression.tsv", sep="\t", index_col=0)
    for sample in raw.columns[:3]:
        got = expr.loc[sample[:12], raw.index].astype(float)
        np.testing.assert_allclose(got, np.log2(raw[sample].to_numpy() + 1), rtol=1e-6)
    mut = store.read_table("mutations").set_index("patient_id")
    assert sorted(mut.index) == sorted(p for p, t in people.items() if t["has_mutations"])
    for pid in mut.index:
        for gene, mutated in people[pid]["mutations"].items():
            assert mut.loc[pid].get(gene, 0) == int(mutated)
    cnv = store.read_table("cnv").set_index("patient_id")
    assert sorted(cnv.index) == sorted(p for p, t in people.items() if t["has_cnv"])
    for pid in cnv.index:
        for gene, call in people[pid]["cnv"].items():
            assert cnv.loc[pid, gene] == call
    clin = store.read_table("clinical").set_index("patient_id")
    assert len(clin) == len(people)
    for pid, row in clin.iterrows():
        assert row["event_time"] == pd.Timestamp(people[pid]["index_date"], tz="UTC")
        assert row["age_at_diagnosis_years"] == pytest.approx(people[pid]["age_years"], abs=0.051)
    labels = store.read_table("labels").set_index("patient_id")
    bad = {r["patient_id"] for r in truth["clinical"]["corrupt_rows"]}
    assert set(labels.index) == set(people) - bad
    for pid, row in labels.iterrows():
        assert (row["time_days"], row["event"]) == (int(people[pid]["time_days"]), int(people[pid]["event"]))


def test_lineage_lists_real_files_with_checksums_and_params(ingested):
    out, _, store, _, _ = ingested
    def sha(name):
        return hashlib.sha256((out / name).read_bytes()).hexdigest()
    expected = {"labels": ["clinical.csv"], "clinical": ["clinical.csv"], "mutations": ["mutations.maf"],
                "cnv": ["cnv.tsv"], "expression": ["expression.tsv", "signatures.gmt"]}
    for group, files in expected.items():
        man = store.manifest(group)
        assert [(Path(s["uri"]).name, s["sha256"]) for s in man["sources"]] == [(f, sha(f)) for f in files]
        assert man["params"]["patient_ids"] == "identity"
    assert store.manifest("mutations")["params"]["mutations"]["rule"] == "classification"
    assert store.manifest("labels")["params"]["subtype_mapping"] == {
        "Adenocarcinoma": 0, "Large cell carcinoma": 1, "Squamous cell carcinoma": 2}
    assert store.manifest("expression")["params"]["log2_applied"] is True
    assert store.manifest("expression")["params"]["signatures"]["SIG_PROLIFERATION"]["found"] == 15


def test_malformed_rows_recorded_with_file_line_column(ingested):
    _, truth, store, reports, _ = ingested
    want = sorted((r["file"], r["line"], r["column"], r["patient_id"]) for r in truth["genomics"]["corrupt_rows"]
                  + truth["clinical"]["corrupt_rows"])
    failures = store.failures()
    got = sorted((json.loads(d)["file"], json.loads(d)["line"], json.loads(d)["column"], pid)
                 for d, pid in zip(failures["details"], failures["patient_id"]))
    assert got == want and len(want) == 2
    assert sum(len(r.failures) for r in reports) == 2


def test_point_in_time_join_presence_and_nan_never_zero(ingested):
    _, truth, store, _, _ = ingested
    people = patients_by_id(truth)
    labels = store.read_table("labels")
    table = training_table(store, labels, groups=["clinical", "expression", "mutations", "cnv"])
    assert list(table["patient_id"]) == list(labels["patient_id"])
    for key, has in (("expression", "has_expression"), ("mutations", "has_mutations"), ("cnv", "has_cnv")):
        want = [people[p][has] for p in table["patient_id"]]
        assert table[f"has_{key}"].tolist() == want
        cols = [c for c in table.columns if c.startswith(f"{key}__") and c != f"{key}__event_time"]
        absent = ~table[f"has_{key}"].to_numpy()
        assert table.loc[absent, cols].isna().all().all()  # missing stays missing ...
        assert table.loc[~absent, cols].notna().any(axis=1).all()  # ... present rows carry values
        assert absent.any(), f"the cohort must have patients without {key} for this check to mean anything"
    assert table["has_clinical"].all()
    assert (table["expression__event_time"].dropna() == pd.Timestamp("1970-01-01", tz="UTC")).all()
    # one label a day before diagnosis: the clinical row (dated at diagnosis) is from the future, the undated
    # expression still counts
    early = labels.iloc[:1].copy()
    early["event_time"] = early["event_time"] - pd.Timedelta(days=1)
    row = training_table(store, early, groups=["clinical", "expression"]).iloc[0]
    assert not row["has_clinical"] and np.isnan(row["clinical__age_at_diagnosis_years"])
    assert row["has_expression"] == people[early["patient_id"].iloc[0]]["has_expression"]


def test_rerun_skips_unchanged_and_force_recomputes(ingested):
    out, _, store, _, _ = ingested
    cfg = IngestConfig(cohort=str(out / "cohort.yaml"), store=store.uri, modalities=("mutations", "cnv"))
    again = run_ingest(cfg, patient_key=identity, progress=lambda s: None)
    assert [(r.n_skipped, r.groups, r.failures) for r in again] == [(r.n_items, {}, []) for r in again]
    assert all(r.n_skipped > 0 for r in again)
    forced = run_ingest(IngestConfig(cohort=cfg.cohort, store=cfg.store, modalities=("cnv",), force=True),
                        patient_key=identity, progress=lambda s: None)
    assert forced[0].groups == {"cnv": "v0002"} and store.latest("cnv") == "v0002"
    changed = run_ingest(IngestConfig(cohort=cfg.cohort, store=cfg.store, modalities=("cnv",),
                                      tables={"cnv": {"max_value": 1}}), patient_key=identity, progress=lambda s: None)
    assert changed[0].groups == {"cnv": "v0003"}  # other settings: not skipped
    twos = int((store.read_table("cnv", version="v0002").drop(columns=["patient_id", "event_time"]) == 2).sum().sum())
    assert twos > 0 and len(changed[0].failures) == twos
    assert all("is not an integer in [-2, 1]; treated as missing" in f["reason"] for f in changed[0].failures)
    cnv_lines = (out / "cnv.tsv").read_text().splitlines()
    for f in changed[0].failures:  # file, line, column (the sample) and value name the cell
        header, row = cnv_lines[0].split("\t"), cnv_lines[f["line"] - 1].split("\t")
        assert (f["file"], row[0], row[header.index(f["column"])], f["value"]) == ("cnv.tsv", f["feature"], "2", "2")
    assert int(store.read_table("cnv").drop(columns=["patient_id", "event_time"]).isna().sum().sum()) == twos


def _cohort_yaml(folder: Path, **parts) -> Path:
    import yaml

    (folder / "cohort.yaml").write_text(yaml.safe_dump(parts))
    return folder / "cohort.yaml"


def test_bad_tables_name_file_and_column(ingested, tmp_path):
    out, _, _, _, _ = ingested
    for name in ("clinical.csv", "mutations.maf"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    store = str(tmp_path / "store")
    spec = _cohort_yaml(tmp_path, clinical={"path": "clinical.csv", "id_column": "patient"})
    with pytest.raises(ConfigError, match=r"clinical\.id_column.*'patient'.*clinical\.csv"):
        run_ingest(IngestConfig(cohort=str(spec), store=store), progress=lambda s: None)
    pd.DataFrame({"gene": ["A", "B"], "S1": [1.0, 2.0], "S2": [3.0, 4.0]}).to_csv(tmp_path / "odd.tsv", sep="\t",
                                                                                  index=False)
    spec = _cohort_yaml(tmp_path, clinical={"path": "clinical.csv", "id_column": "case_submitter_id"},
                        expression={"path": "odd.tsv"})
    with pytest.raises(CohortError, match=r"odd\.tsv.*expression\.orientation"):
        run_ingest(IngestConfig(cohort=str(spec), store=store, modalities=("expression",)), progress=lambda s: None)
    text = (tmp_path / "mutations.maf").read_text().replace("Variant_Classification", "Variant_Class")
    (tmp_path / "mutations.maf").write_text(text)
    spec = _cohort_yaml(tmp_path, mutations="mutations.maf")
    with pytest.raises(CohortError, match=r"mutations\.maf.*Variant_Classification"):
        run_ingest(IngestConfig(cohort=str(spec), store=store), progress=lambda s: None)
    spec = _cohort_yaml(tmp_path, clinical={"path": "clinical.csv", "id_column": "case_submitter_id"},
                        labels={"time_days": "overall_survival_days", "event": "vital_status", "event_value": "1"})
    with pytest.raises(CohortError, match=r"clinical\.csv.*'vital_status'.*event_value '1'"):
        run_ingest(IngestConfig(cohort=str(spec), store=store), progress=lambda s: None)


def test_bad_tables_config_reports_all_problems(ingested):
    out, _, store, _, _ = ingested
    cfg = IngestConfig(cohort=str(out / "cohort.yaml"), store=store.uri, modalities=("clinical", "mutations"),
                       tables={"mutations": {"rule": "any"}, "clinical": {"max_categories": 1}, "bogus": 1})
    with pytest.raises(ConfigError) as err:
        run_ingest(cfg, progress=lambda s: None)
    text = str(err.value)
    assert "tables.mutations.rule" in text and "tables.clinical.max_categories" in text and "tables.bogus" in text


# ------------------------------------------------------------------ CLI


def _ray_started() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


@pytest.mark.slow  # writes a cohort and ingests it
def test_cli_ingest_ls_show_on_the_tiny_cohort(tmp_path, capsys):
    """The whole tiny cohort (slides and CT in its manifest), its table modalities only: exit 3."""
    write_cohort(tmp_path / "cohort", patients=5, seed=0, profile="tiny", corrupt=4)  # 5 patients: fewer slides
    truth = json.loads((tmp_path / "cohort" / "truth.json").read_text())
    assert truth["slides"] and truth["ct"]  # the manifest lists wsi and ct items
    bad = truth["genomics"]["corrupt_rows"] + truth["clinical"]["corrupt_rows"]
    store = str(tmp_path / "store")
    code = main(["ingest", "--cohort", str(tmp_path / "cohort" / "cohort.yaml"), "--store", store,
                 "--modalities", ",".join(TABLE_MODALITIES)])
    out = capsys.readouterr().out
    assert code == 3
    assert not _ray_started()  # tables run in-process
    for m in TABLE_MODALITIES:
        assert f"==> ingest {m}" in out
    assert f"{len(bad)} input(s) failed" in out and len(bad) == 2
    for row in bad:
        assert f"{row['file']}:{row['line']}" in out
    assert main(["store", "ls", store]) == 0
    listing = capsys.readouterr().out
    for group in GROUPS:
        line = next(ln for ln in listing.splitlines() if ln.split()[:1] == [group])
        rows = FeatureStore(store).manifest(group)["num_rows"]
        assert line.split()[1] == "v0001*" and int(line.split()[3]) == rows
    assert main(["store", "show", store, "labels@v0001"]) == 0
    shown = capsys.readouterr().out
    assert f"labels@v0001 (table), {5 - len(truth['clinical']['corrupt_rows'])} rows" in shown
    assert "clinical.csv" in shown and "sha256" in shown
    assert '"event_value": "Dead"' in shown and "subtype_code: int64" in shown
    assert main(["store", "failures", store]) == 0
    listed = capsys.readouterr().out
    assert all(row["file"] + ":" + str(row["line"]) in listed for row in bad)


def test_cli_clean_cohort_exits_0(tmp_path, capsys):
    write_tables_cohort(tmp_path / "cohort", patients=8, seed=4, corrupt=0)
    store = str(tmp_path / "store")
    assert main(["ingest", "--cohort", str(tmp_path / "cohort" / "cohort.yaml"), "--store", store]) == 0
    out = capsys.readouterr().out
    assert "failed (also in" not in out and "clinical@v0001, labels@v0001" in out
    assert FeatureStore(store).failures().empty


def test_cli_error_exit_1_names_the_problem(tmp_path, capsys):
    write_tables_cohort(tmp_path / "cohort", patients=8, seed=4)
    code = main(["ingest", "--cohort", str(tmp_path / "cohort" / "cohort.yaml"), "--store", str(tmp_path / "s"),
                 "--modalities", "clinical", "tables.clinical.max_categories=0"])
    assert code == 1
    assert "tables.clinical.max_categories" in capsys.readouterr().err


# ------------------------------------------------------------------ other inputs


def test_star_counts_folder_ingests_with_lineage(tmp_path):
    from tables_testdata import STAR_GENES, STAR_SAMPLES, star_values, write_star_cohort

    files = write_star_cohort(tmp_path / "star")
    (tmp_path / "clinical.csv").write_text("case,age,os_days,status\nTCGA-05-4244,61,100,1\n"
                                           "TCGA-05-4249,55,200,0\nTCGA-05-4250,70,300,1\n")
    spec = _cohort_yaml(tmp_path, clinical={"path": "clinical.csv", "id_column": "case"}, expression="star",
                        labels={"time_days": "os_days", "event": "status"})
    store = FeatureStore(tmp_path / "store")
    (rep,) = run_ingest(IngestConfig(cohort=str(spec), store=store.uri, modalities=("expression",)),
                        patient_key=identity, progress=lambda s: None)
    assert rep.failures == [] and rep.n_items == 3 and rep.n_done == 3
    expr = store.read_table("expression").set_index("patient_id")
    assert sorted(expr.index) == sorted(s[:12] for s in STAR_SAMPLES)
    assert [c for c in expr.columns if c != "event_time"] == ["EGFR", "KRAS", "TP53", "HOTAIR"]
    for s, sample in enumerate(STAR_SAMPLES):
        tpm = [star_values(s, g)[3] for g in range(len(STAR_GENES))]
        assert expr.loc[sample[:12], "EGFR"] == pytest.approx(np.log2(tpm[0] + 1), abs=1e-4)
        assert expr.loc[sample[:12], "TP53"] == pytest.approx(np.log2(tpm[2] + tpm[4] + 1), abs=1e-4)  # summed ids
    sources = {Path(s["uri"]).name for s in store.manifest("expression")["sources"]}
    assert sources == {"gdc_sample_sheet.2024-05-01.tsv", *(f.name for f in files.values())}
    (rep,) = run_ingest(IngestConfig(cohort=str(spec), store=store.uri, modalities=("expression",),
                                     tables={"tumour_only": True}), patient_key=identity, progress=lambda s: None)
    assert rep.n_done == 2 and any("TCGA-05-4250-11A" in n and "tumour_only" in n for n in rep.notes)


def test_clinical_rows_that_cannot_be_used_are_failures(tmp_path):
    (tmp_path / "clinical.csv").write_text(
        'case,age,note,site\n'
        'P1,61,"smoker, heavy",A\n'       # line 2: quoted comma is one field
        'P2,55\n'                          # line 3: short row
        'P1,70,dup,B\n'                    # line 4: id seen on line 2
        ',66,no id,A\n'                    # line 5: empty id
        'P3,"5\n6",multi-line,B\n'          # lines 6-7: a quoted newline, age not a number
        'P4,48,ok,A\n')                    # line 8
    spec = _cohort_yaml(tmp_path, clinical={"path": "clinical.csv", "id_column": "case"})
    store = FeatureStore(tmp_path / "store")
    (rep,) = run_ingest(IngestConfig(cohort=str(spec), store=store.uri), patient_key=identity,
                        progress=lambda s: None)
    got = sorted((f["line"], f["column"], f["patient_id"]) for f in rep.failures)
    assert got == [(3, None, "P2"), (4, "case", "P1"), (5, "case", None), (6, "age", "P3")]
    assert "2 of 4 fields" in next(f for f in rep.failures if f["line"] == 3)["reason"]
    clin = store.read_table("clinical").set_index("patient_id")
    assert sorted(clin.index) == ["P1", "P3", "P4"]
    assert clin.loc["P1", "age"] == 61 and np.isnan(clin.loc["P3", "age"]) and clin.loc["P3", "age__missing"] == 1
    assert rep.n_items == 6 and rep.n_done == 3


def test_ingest_into_an_s3_store(tmp_path, s3_env):
    """The same ingest on the S3 server process: groups, failures, reports, resume."""
    from mmray.report.render import read_report

    truth = write_tables_cohort(tmp_path / "cohort", patients=6, seed=0, corrupt=4)
    cfg = IngestConfig(cohort=str(tmp_path / "cohort" / "cohort.yaml"), store=s3_env)
    reports = run_ingest(cfg, patient_key=identity, progress=lambda s: None)
    store = FeatureStore(s3_env)
    assert store.groups() == GROUPS
    assert len(store.failures()) == sum(len(r.failures) for r in reports) == 2
    assert read_report(store, "leakage")["n_rows"] == 6 - len(truth["clinical"]["corrupt_rows"])
    assert read_report(store, "bias")["attributes"][0]["attribute"] == "gender"
    labels = store.read_table("labels")
    table = training_table(store, labels, groups=["expression", "mutations"])
    assert len(table) == len(labels) and table["has_mutations"].any()
    again = run_ingest(cfg, patient_key=identity, progress=lambda s: None)
    assert all(r.n_skipped == r.n_items and not r.groups for r in again)


def test_the_ingest_job_yaml_builds():
    from mmray.config import build, load_config
    from mmray.ingest.tables import CONFIG

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(IngestConfig, root / "ray_jobs" / "configs" / "ingest.yaml", ["cohort=unused", "store=unused"])
    assert cfg.tables["mutations"]["rule"] == "classification" and cfg.modalities == ()
    built = build(CONFIG, cfg.tables)
    assert built.reports.leakage.auc_threshold == 0.9 and built.expression.duplicate_genes == "sum"
