"""Keyed pseudonyms: stable, key-dependent, the same in every modality, and no id or key in the store."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from tables_testdata import TABLE_MODALITIES, write_tables_cohort

from mmray.cli import main
from mmray.errors import ConfigError
from mmray.ingest.pseudonym import (
    KEY_ENV,
    KEY_FILE_ENV,
    PREFIX,
    SOURCE_LABEL_PREFIX,
    PathRedactor,
    Pseudonymiser,
    identity,
    is_pseudonymised,
    pseudonymiser_from_env,
    source_label,
)
from mmray.ingest.run import IngestConfig, run_ingest
from mmray.store import FeatureStore

KEY = "k3y-for-tests-0123456789abcdef"
OTHER = "another-key-for-tests-987654321"


def test_stable_and_different_with_the_key():
    a, b = Pseudonymiser(KEY.encode()), Pseudonymiser(KEY.encode())
    assert a("TCGA-05-4244") == b("TCGA-05-4244") == a(" TCGA-05-4244 ")
    assert a("TCGA-05-4244") != a("TCGA-05-4249")
    assert a("TCGA-05-4244") != Pseudonymiser(OTHER.encode())("TCGA-05-4244")
    p = a("TCGA-05-4244")
    assert p.startswith(PREFIX) and len(p) == len(PREFIX) + 24 and "4244" not in p
    assert KEY not in repr(a) and "hidden" in repr(a)
    assert pickle.loads(pickle.dumps(a))("TCGA-05-4244") == p  # Ray ships it to workers


def test_key_from_environment_or_file(tmp_path):
    assert pseudonymiser_from_env({}) is identity
    from_env = pseudonymiser_from_env({KEY_ENV: KEY})
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")  # a trailing newline from `echo` is not part of the key
    from_file = pseudonymiser_from_env({KEY_FILE_ENV: str(key_file)})
    assert from_env("R01-001") == from_file("R01-001") == Pseudonymiser(KEY.encode())("R01-001")
    with pytest.raises(ConfigError, match=KEY_FILE_ENV):
        pseudonymiser_from_env({KEY_FILE_ENV: str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        pseudonymiser_from_env({KEY_ENV: "short"})


@pytest.fixture(scope="module")
def pseudonymised(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    truth = write_tables_cohort(out, patients=12, seed=0, corrupt=4)
    store = FeatureStore(tmp_path_factory.mktemp("store") / "fs")
    key = Pseudonymiser(KEY.encode())
    reports = run_ingest(IngestConfig(cohort=str(out / "cohort.yaml"), store=store.uri), patient_key=key,
                         progress=lambda s: None)
    return truth, store, key, reports


def test_one_pseudonym_per_patient_across_every_modality(pseudonymised):
    truth, store, key, reports = pseudonymised
    assert sorted(store.groups()) == ["clinical", "cnv", "expression", "labels", "mutations", "proteins"]
    expected = {p["patient_id"]: key(p["patient_id"]) for p in truth["patients"]}
    has = {"clinical": lambda p: True, "labels": lambda p: True, "expression": lambda p: p["has_expression"],
           "mutations": lambda p: p["has_mutations"], "cnv": lambda p: p["has_cnv"],
           "proteins": lambda p: p["has_proteins"]}
    bad_label = {r["patient_id"] for r in truth["clinical"]["corrupt_rows"]}
    for group, present in has.items():
        ids = set(store.read_table(group, columns=["patient_id"])["patient_id"])
        want = {expected[p["patient_id"]] for p in truth["patients"] if present(p)}
        if group == "labels":
            want -= {expected[p] for p in bad_label}
        assert ids == want, group
    assert store.manifest("labels")["params"]["patient_ids"] == f"pseudonym:{key(chr(0) + 'mmray-pseudonym-key-check')}"
    failed = store.failures()
    assert set(failed["patient_id"]) == {expected[p] for p in bad_label}
    assert len(failed) == 2 and all(r.failures for r in reports if r.modality in ("clinical", "mutations"))


def _texts_under(root: Path):
    """Every file as bytes, and Parquet files also decoded (compression can hide strings from a byte scan)."""
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        yield path, data
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            yield path, (str(table.schema) + table.to_pandas().to_csv()).encode()


def test_no_raw_id_and_no_key_in_any_file_of_the_store(pseudonymised):
    truth, store, _, _ = pseudonymised
    root = Path(store.uri)
    raw_ids = [p["patient_id"] for p in truth["patients"]]
    needles = [i.encode() for i in raw_ids] + [KEY.encode(), KEY.encode().hex().encode()]
    checked = 0
    for path, data in _texts_under(root):
        for needle in needles:
            assert needle not in data, f"{needle!r} found in {path.relative_to(root)}"
        checked += 1
    kinds = {p.suffix for p in root.rglob("*") if p.is_file()}
    assert {".parquet", ".json", ".html"} <= kinds and checked > 15  # groups, manifests, failures, reports


def test_cli_takes_the_key_from_the_environment(tmp_path, monkeypatch, capsys):
    write_tables_cohort(tmp_path / "cohort", patients=8, seed=4)
    monkeypatch.setenv(KEY_ENV, OTHER)
    store = str(tmp_path / "store")
    assert main(["ingest", "--cohort", str(tmp_path / "cohort" / "cohort.yaml"), "--store", store,
                 "--modalities", ",".join(TABLE_MODALITIES)]) == 0
    capsys.readouterr()
    key = Pseudonymiser(OTHER.encode())
    ids = set(FeatureStore(store).read_table("clinical")["patient_id"])
    import json

    truth = json.loads((tmp_path / "cohort" / "truth.json").read_text())
    assert ids == {key(p["patient_id"]) for p in truth["patients"]}
    for path, data in _texts_under(Path(store)):
        assert OTHER.encode() not in data and b"TCGA-" not in data, path


def test_a_second_id_column_is_not_a_feature(tmp_path):
    import pandas as pd

    truth = write_tables_cohort(tmp_path / "cohort", patients=8, seed=4)
    clinical = tmp_path / "cohort" / "clinical.csv"
    df = pd.read_csv(clinical, dtype=str, keep_default_na=False)
    df.insert(1, "bcr_sample_barcode", df["case_submitter_id"] + "-01A")  # 8 levels: would be one-hot
    df.to_csv(clinical, index=False)
    store = FeatureStore(tmp_path / "store")
    (rep,) = run_ingest(IngestConfig(cohort=str(tmp_path / "cohort" / "cohort.yaml"), store=store.uri,
                                     modalities=("clinical",)), patient_key=Pseudonymiser(KEY.encode()),
                        progress=lambda s: None)
    assert any("'bcr_sample_barcode' holds patient identifiers" in n for n in rep.notes)
    assert not any(c.startswith("bcr_sample_barcode") for c in store.read_table("clinical").columns)
    raw = [p["patient_id"].encode() for p in truth["patients"]]
    for path, data in _texts_under(Path(store.uri)):
        assert not any(r in data for r in raw), path


def test_source_labels_are_keyed_and_paths_pass_through_without_a_key():
    key = Pseudonymiser(KEY.encode())
    path = "/data/Ward7_DrSmith/TCGA-05-4244-01Z-00-DX1.svs"
    label = source_label(key, path)
    assert label.startswith(SOURCE_LABEL_PREFIX) and len(label) == len(SOURCE_LABEL_PREFIX) + 16
    assert label == source_label(Pseudonymiser(KEY.encode()), path) != source_label(key, path + "x")
    assert label != source_label(Pseudonymiser(OTHER.encode()), path)
    assert source_label(identity, path) == path and not is_pseudonymised(identity) and is_pseudonymised(key)


def test_path_redactor_replaces_input_roots_in_text_objects_and_log_records(tmp_path, caplog):
    key = Pseudonymiser(KEY.encode())
    root = tmp_path / "Ward7_DrSmith" / "cohort"
    redact = PathRedactor(key, [str(root), None])
    label = source_label(key, str(root))
    assert redact(f"wrote 3 patients to {root}/slides") == f"wrote 3 patients to {label}/slides"
    cfg = redact({"cohort": f"{root}/cohort.yaml", "n": 3, "stages": [f"{root}", "x"]})
    assert cfg == {"cohort": f"{label}/cohort.yaml", "n": 3, "stages": [label, "x"]}
    assert not PathRedactor(identity, [str(root)]) and PathRedactor(identity, [str(root)])(str(root)) == str(root)

    log = logging.getLogger("mmray.test.redact")
    with redact.logs():
        log.warning("cannot read %s/a.svs", root)
        try:
            raise OSError(f"no such file: {root}/b.svs")
        except OSError:
            log.exception("failed")
    log.warning("after: %s", root)  # the filter is gone once the block ends
    text = caplog.text
    assert f"cannot read {label}/a.svs" in text and f"no such file: {label}/b.svs" in text
    assert text.count(str(root)) == 1 and f"after: {root}" in text
