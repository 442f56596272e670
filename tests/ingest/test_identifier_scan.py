"""The identifier scan: finds every kind of raw identifier in every format mmray writes (planted leaks),
and stays silent on clean files."""

from __future__ import annotations

import base64
import gzip
import io
import json
import sqlite3
import zipfile

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, PngImagePlugin

from mmray.cli import main
from mmray.ingest.identifier_scan import Scanner, cohort_identifiers, label_sources
from mmray.ingest.pseudonym import Pseudonymiser, source_label
from mmray.synth.cohort import write_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("Ward7_DrSmith") / "cohort"
    write_cohort(out, patients=4, seed=3, profile="tiny")
    truth = json.loads((out / "truth.json").read_text())
    return out, truth, cohort_identifiers(out / "cohort.yaml")


def test_collects_every_kind_of_identifier(cohort):
    out, truth, identifiers = cohort
    by_kind: dict[str, set[str]] = {}
    for i in identifiers:
        by_kind.setdefault(i.kind, set()).add(i.value)
    values = {i.value for i in identifiers}
    patients = truth["patients"]
    assert {p["patient_id"] for p in patients} <= by_kind["patient_id"]
    aliquots = set(pd.read_csv(out / "expression.tsv", sep="\t", nrows=0).columns[1:])
    assert aliquots and aliquots <= by_kind["sample_barcode"]  # expression columns: aliquot barcodes
    assert {s["slide_id"] for s in truth["slides"]} <= values
    assert {s["study_uid"] for s in truth["ct"]} <= values and by_kind["dicom_uid"]
    assert str(out) in by_kind["input_path"]
    assert any(v.endswith(".dcm") for v in by_kind["file_name"])
    assert by_kind["dicom_phi"]  # names, MRNs, accession numbers from the CT headers
    assert not {"slides", "ct", "cohort"} & values  # generic folder names are not identifiers


def _png_with_text(text: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", text)
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def test_planted_leaks_are_found_in_every_format_and_clean_files_pass(cohort, tmp_path):
    out, truth, identifiers = cohort
    p0 = truth["patients"][0]
    pid = p0["patient_id"]
    barcode = next(c for c in pd.read_csv(out / "expression.tsv", sep="\t", nrows=0).columns[1:]
                   if not c.startswith(pid))  # an aliquot barcode of another patient
    slide = truth["slides"][0]["slide_id"]
    uid = truth["ct"][0]["study_uid"]
    leaks = tmp_path / "leaks"
    leaks.mkdir()
    plant = {
        "column.parquet": lambda f: pq.write_table(pa.table({"x": [1, 2], "who": ["ok", pid]}), f),
        "dictionary.parquet": lambda f: pq.write_table(
            pa.table({"who": pa.array(["a", barcode, "a"]).dictionary_encode()}), f),
        "listcol.parquet": lambda f: pq.write_table(pa.table({"ids": [["x"], [slide]]}), f),
        "colname.parquet": lambda f: pq.write_table(pa.table({barcode: [1.0]}), f),
        "metadata.parquet": lambda f: pq.write_table(pa.table({"x": [1]}).replace_schema_metadata(
            {"lineage": json.dumps({"source": str(out / "expression.tsv")})}), f),
        "manifest.json": lambda f: f.write_text(json.dumps({"sources": [{"uri": str(out / "slides")}]})),
        "lower.csv": lambda f: f.write_text(f"id,v\n{pid.lower().replace('-', '_')},1\n"),  # another spelling
        "report.html": lambda f: f.write_text(
            '<img src="data:image/png;base64,' + base64.b64encode(_png_with_text(uid)).decode() + '">'),
        "mlflow.db": lambda f: _sqlite_with(f, f"dicom study {uid}"),
        "log.txt.gz": lambda f: f.write_bytes(gzip.compress(f"opened {slide}.tiff\n".encode())),
        "artifact.zip": lambda f: _zip_with(f, "model/params.txt", f"patient={pid}"),
    }
    for name, write in plant.items():
        write(leaks / name)
    findings, n_files = Scanner(identifiers).scan([leaks])
    assert n_files == len(plant)
    by_file = {}
    for f in findings:
        by_file.setdefault(f.file.rsplit("/", 1)[-1], set()).add(f.value)
    assert set(by_file) == set(plant), sorted(set(plant) - set(by_file))  # every planted leak is found
    assert pid in by_file["column.parquet"] and barcode in by_file["dictionary.parquet"]
    assert uid in by_file["report.html"] and uid in by_file["mlflow.db"] and pid in by_file["lower.csv"]

    clean = tmp_path / "clean"
    clean.mkdir()
    pq.write_table(pa.table({"patient_id": ["PSN-0a1b2c3d4e5f60718293a4b5"], "x": [0.5]}), clean / "ok.parquet")
    (clean / "ok.json").write_text(json.dumps({"sources": [{"uri": "SRC-0123456789abcdef", "sha256": "00"}]}))
    _sqlite_with(clean / "ok.db", "slides ct cohort harrell_c 0.61")
    assert Scanner(identifiers).scan([clean]) == ([], 3)

    code = main(["privacy-scan", "--cohort", str(out / "cohort.yaml"), str(leaks)])
    assert code == 1
    assert main(["privacy-scan", "--cohort", str(out / "cohort.yaml"), str(clean)]) == 0


def _sqlite_with(path, text: str) -> None:
    con = sqlite3.connect(path)
    con.execute("create table params (key text, value text, blob blob)")
    con.execute("insert into params values (?, ?, ?)", ("note", "nothing", text.encode()))
    con.commit()
    con.close()


def _zip_with(path, member: str, text: str) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(member, text)


def test_source_labels_resolve_back_to_the_files_with_the_key(cohort):
    out, truth, _ = cohort
    key = Pseudonymiser(b"label-test-key-0123456789")
    files = label_sources(out / "cohort.yaml", key)
    slide = str(out / truth["slides"][0]["path"])
    assert files[source_label(key, slide)] == slide
    assert files[source_label(key, str(out / "clinical.csv"))] == str(out / "clinical.csv")
    assert source_label(Pseudonymiser(b"another-key-0123456789"), slide) not in files  # only with the same key
