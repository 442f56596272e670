"""`mmray pipeline` in-process on a local Ray: every stage of the tiny pipeline, then a rerun that skips.

The module starts Ray once, builds one store with ``ray_jobs/configs/pipeline_tiny.yaml`` (24 synthetic
patients; about 2-3 minutes on 2 cores) and every test reads it. The run is pseudonymised
(``MMRAY_PSEUDONYM_KEY``), has deliberately broken inputs (failures tables), trains every kind of model that
writes results (HEEC importances, PORPOISE attention), and sits below a folder named like a person: the
privacy test scans everything it wrote (store, MLflow, report, driver and Ray worker logs) for every raw
identifier of the cohort.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import ray

from mmray.cli import main
from mmray.config import load_config
from mmray.errors import ConfigError
from mmray.ingest.identifier_scan import Scanner, cohort_identifiers
from mmray.ingest.pseudonym import KEY_ENV, Pseudonymiser
from mmray.pipeline import STAGES, PipelineConfig, run_pipeline
from mmray.serve.queries import StoreRows
from mmray.store import FeatureStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # runs `mmray pipeline`: Ray, every stage, Serve
REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "ray_jobs" / "configs" / "pipeline_tiny.yaml")
SIGNATURE_MODELS = {"sig__SIG_PROLIFERATION", "sig__SIG_IMMUNE_CYTOLYTIC", "sig__ALL_GENES"}
TUNED_MODEL = "mmray__early_fusion"


KEY = "tiny-pipeline-pseudonym-key-0123456789"
PERSON_FOLDER = "Ward7_DrSmith"  # a folder name someone chose, above the cohort: must not leak either
CORRUPT = 4  # one of each kind: truncated slide, CT without pixels, SEG off its CT, malformed table row
TRAIN_MODELS = [  # the tiny YAML's two models plus the two whose results name tiles and features
    "train.models=[{name: single, sets: [clinical]}, {name: early_fusion, sets: [tabular]}, "
    "{name: heec, sets: [all]}, {name: porpoise, sets: [path_omics]}]",
    "train.modality_sets={clinical: [clinical], tabular: [clinical, expression, mutations_cnv, radiomics], "
    "all: [clinical, expression, mutations_cnv, radiomics, slide], path_omics: [tiles, clinical]}",
    "train.lgbm.executor=local"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, free_ports):
    """The tiny pipeline's first run: ``(overrides, report, seconds, progress lines, logs)``.

    ``logs``: the folders and files holding the run's logs (driver log, progress lines, Ray's session
    folder with every worker's output).
    """
    root = tmp_path_factory.mktemp("pipeline")
    ray_tmp = tempfile.mkdtemp(prefix="mmr", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    mp = pytest.MonkeyPatch()
    for var in ("MLFLOW_TRACKING_URI", "MMRAY_SERVE_TOKEN", "MMRAY_PSEUDONYM_KEY_FILE"):
        mp.delenv(var, raising=False)
    mp.setenv(KEY_ENV, KEY)
    driver_log = logging.FileHandler(root / "driver.log")
    driver_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(driver_log)
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.INFO)
    ray.init(num_cpus=2, object_store_memory=1_500_000_000, include_dashboard=False, log_to_driver=False,
             _temp_dir=ray_tmp)
    try:
        overrides = [f"store={root}/store", f"synth.out={root}/{PERSON_FOLDER}/cohort",
                     f"serve.port={free_ports(1)[0]}", f"synth.corrupt={CORRUPT}", *TRAIN_MODELS]
        lines: list[str] = []
        start = time.perf_counter()
        report = run_pipeline(load_config(PipelineConfig, TINY, overrides), progress=lines.append)
        seconds = time.perf_counter() - start
        (root / "progress.log").write_text("\n".join(lines) + "\n" + report.text() + "\n")
        yield overrides, report, seconds, lines, [root / "driver.log", root / "progress.log", Path(ray_tmp)]
    finally:
        ray.shutdown()
        logging.getLogger().removeHandler(driver_log)
        logging.getLogger().setLevel(level)
        driver_log.close()
        mp.undo()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _store(overrides) -> FeatureStore:
    return FeatureStore(overrides[0].split("=", 1)[1])


def _cohort_dir(overrides) -> Path:
    return Path(next(o for o in overrides if o.startswith("synth.out=")).split("=", 1)[1])


def test_first_run_runs_every_stage_into_the_store_and_registry(tiny):
    overrides, report, _, lines, _ = tiny
    assert report.exit_code == 3, report.text()  # finished, with the planted broken inputs listed
    assert [(s.name, s.status) for s in report.stages] == [(name, "ran") for name in STAGES], report.text()
    key = Pseudonymiser(KEY.encode())
    truth = json.loads((_cohort_dir(overrides) / "truth.json").read_text())
    failures = _store(overrides).failures()
    ingest_failures = failures[failures["stage"].str.startswith("ingest-")]
    assert report.stage("ingest").data["failed"] == len(ingest_failures) >= CORRUPT, report.text()
    # pretrain reads the same slides and meets the broken one again, under its own stage names
    assert set(failures["stage"]) - set(ingest_failures["stage"]) <= {"pretrain", "pretrain-embed"}
    assert set(failures["patient_id"]) == {key(c["patient_id"]) for c in truth["corruptions"]}  # each, keyed
    store = _store(overrides)
    assert {"clinical", "labels", "expression", "mutations", "cnv", "radiomics", "wsi_tiles", "wsi_slide",
            "wsi_patient", "folds"} <= set(store.groups())
    assert "==> ingest wsi" in lines and "==> ingest ct" in lines  # progress of the inner stages too

    train = report.stage("train").data
    fits = pd.read_parquet(Path(train["output"]) / "results.parquet")
    assert len(fits) == 4 * 3 and (fits["status"] == "ok").all()  # 4 model x set combinations x 3 folds
    predictions = pd.read_parquet(Path(train["output"]) / "predictions.parquet")
    assert set(predictions["patient_id"]) <= {key(p["patient_id"]) for p in truth["patients"]}  # pseudonyms
    assert len(pd.read_parquet(Path(train["output"]) / "attention.parquet"))  # PORPOISE's per-tile attention
    assert len(pd.read_parquet(Path(train["output"]) / "importances.parquet"))  # HEEC's features
    assert json.loads((Path(train["output"]) / "pipeline.json").read_text())["key"] == train["key"]
    tune = report.stage("tune").data
    assert tune["trials"] == 2 and Path(tune["best_model"]).is_dir()

    client = mlflow.MlflowClient(f"sqlite:///{store.uri}/_mlflow/mlflow.db")
    for name in SIGNATURE_MODELS | {TUNED_MODEL}:
        assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert report.stage("register").data["outcome"] == "registered"

    html = Path(report.stage("report").data["path"])
    assert html == Path(store.uri) / "_reports" / "report.html"
    text = html.read_text()
    assert TUNED_MODEL in text and train["run"] in text  # the serve queries and this run's results


def test_pseudonymised_run_leaves_no_raw_identifier_anywhere(tiny, tmp_path):
    """Everything the run wrote (store, failures, results, MLflow database and artifacts, report, driver and
    Ray worker logs) holds none of the cohort's raw ids, barcodes, file or folder names, DICOM UIDs, PHI or
    input paths. First proven able to fail: a copy of a real manifest with one raw path planted in it."""
    overrides, report, _, _, logs = tiny
    cohort = _cohort_dir(overrides)
    identifiers = cohort_identifiers(cohort / "cohort.yaml", also=[PERSON_FOLDER])
    kinds = {i.kind for i in identifiers}
    assert {"patient_id", "sample_barcode", "file_name", "input_path", "dicom_uid", "dicom_phi"} <= kinds
    scanner = Scanner(identifiers)
    store = _store(overrides)

    planted = tmp_path / "planted"
    manifest = json.loads((Path(store.uri) / "wsi_tiles" / store.latest("wsi_tiles") / "_manifest.json").read_text())
    slide = json.loads((cohort / "truth.json").read_text())["slides"][0]
    manifest["sources"][0]["uri"] = str(cohort / slide["path"])  # what mmray wrote before pseudonymised lineage
    planted.mkdir()
    (planted / "_manifest.json").write_text(json.dumps(manifest))
    caught, _ = scanner.scan([planted])
    assert {f.value for f in caught} == {str(cohort / slide["path"])}, caught

    findings, n_files = scanner.scan([store.uri, *logs])
    assert n_files > 200 and (Path(store.uri) / "_mlflow" / "mlflow.db").exists()
    assert store.failures()["item"].str.startswith("SRC-").all()  # failures name inputs by their labels
    assert findings == [], "\n".join(f.line() for f in findings[:20])


def test_serve_answered_real_queries_with_the_models_offline_predictions(tiny):
    overrides, report, _, _, _ = tiny
    served = report.stage("serve").data
    assert sorted(served["models"]) == sorted(SIGNATURE_MODELS | {TUNED_MODEL})
    assert served["errors"] == 0 and len(served["queries"]) == 6, served["queries"]
    assert served["url"].startswith("http://127.0.0.1:") and not served["kept_running"]
    store = _store(overrides)
    mlflow.set_tracking_uri(f"sqlite:///{store.uri}/_mlflow/mlflow.db")
    mlflow.set_registry_uri(f"sqlite:///{store.uri}/_mlflow/mlflow.db")
    rows = StoreRows(store)
    first = {}
    for q in served["queries"]:
        assert q["status"] == 200 and q["latency_ms"] > 0 and 1 <= len(q["risk"]) <= 4  # rows wrap around
        first.setdefault(q["model"], q)
    for name, q in first.items():  # each model's first query sent the first 4 complete rows of the store
        model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
        schema = model.metadata.get_input_schema()  # e.g. has_expression is boolean in the tuned model's
        sent = rows.rows_for(schema.input_names()).head(4)
        offline = model.predict(sent.astype({c.name: c.type.to_pandas() for c in schema.inputs}))
        np.testing.assert_allclose(q["risk"], offline["risk"].to_numpy(), rtol=1e-9)


def test_rerun_skips_what_the_store_holds(tiny):
    overrides, first, first_seconds, _, _ = tiny
    start = time.perf_counter()
    again = run_pipeline(load_config(PipelineConfig, TINY, overrides), progress=lambda _: None)
    seconds = time.perf_counter() - start
    assert again.exit_code == 3, again.text()  # the broken inputs are still listed as failed
    status = {s.name: s.status for s in again.stages}
    assert status == {"synth": "skipped", "ingest": "skipped", "pretrain": "skipped", "train": "skipped", "tune": "skipped",
                      "register": "skipped", "signatures": "skipped", "serve": "ran", "report": "ran"}, again.text()
    assert again.stage("train").data["run"] == first.stage("train").data["run"]
    assert again.stage("register").data["run_id"] == first.stage("register").data["run_id"]
    assert again.stage("serve").data["errors"] == 0
    skipped = sum(s.seconds for s in again.stages if s.status == "skipped")
    assert skipped < 0.25 * sum(s.seconds for s in first.stages if s.name not in ("serve", "report")), again.text()
    assert seconds < 0.6 * first_seconds


def test_a_changed_train_config_trains_again_under_a_new_run(tiny, capsys):
    overrides, first, _, _, _ = tiny
    store = overrides[0].split("=", 1)[1]
    code = main(["pipeline", "--config", TINY, "--store", store, *overrides[1:], "stages=[train]",
                 "train.n_boot=10"])  # the module's Ray is up: the command uses it
    out = capsys.readouterr().out
    assert code == 0, out
    row = re.search(r"^train\s+(\w+)\s+[\d.]+\s+run (train-\w+)", out, re.MULTILINE)
    assert row and row.group(1) == "ran" and row.group(2) != first.stage("train").data["run"], out
    assert (Path(store) / "_results" / row.group(2) / "pipeline.json").exists()


def test_config_problems_are_reported_together():
    with pytest.raises(ConfigError) as e:
        load_config(PipelineConfig, TINY, [
            "stages=[train, synth]", "ingest.wsi.encoder.nmae=x", "ingest.ct.task_resources={ingest_cpu: 0}",
            "train.folds.n_folds=1", "tune.model=nope", "signatures.store=/elsewhere", "serve.queries=-1",
            "register.registry.alias=other"])
    paths = {p for p, _ in e.value.problems}
    assert paths == {"stages", "ingest.wsi.encoder.nmae", "ingest.ct.task_resources.ingest_cpu",
                     "train.folds.n_folds", "tune.model", "signatures.store", "serve.queries",
                     "register.registry"}, e.value
    with pytest.raises(ConfigError, match="cohort"):
        load_config(PipelineConfig, TINY, ["stages=[ingest, train]"])  # no synth, no cohort


@pytest.mark.parametrize("path", sorted((REPO / "ray_jobs" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_job_yaml_shows_its_ray_job_submit_command(path, monkeypatch):
    """Run from the repository root, as `--working-dir .` needs."""
    monkeypatch.setenv("MMRAY_SERVE_TOKEN", "t")  # what serving on 0.0.0.0 (the cluster's pipeline.yaml) needs
    header = "\n".join(line.lstrip("# ").rstrip("\\ ") for line in path.read_text().splitlines()
                       if line.startswith("#"))
    cmd = re.search(r"ray job submit --working-dir \. --runtime-env (\S+) -- python (ray_jobs/\w+\.py)\s+"
                    r"--config (\S+)", " ".join(header.split()))
    assert cmd, f"{path}: the header shows no `ray job submit --working-dir . --runtime-env ...` command"
    env, script, config = cmd.groups()
    assert (REPO / env).is_file() and (REPO / script).is_file() and config == str(path.relative_to(REPO))
    if script == "ray_jobs/pipeline.py":  # a pipeline config: every section valid
        load_config(PipelineConfig, path, ["store=/tmp/s", "cohort=/tmp/c/cohort.yaml"])
