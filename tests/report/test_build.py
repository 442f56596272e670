"""The run report: one self-contained HTML file, every section filled from a real run's store.

The module fixture runs the real stages on a tiny synthetic cohort (slides with one truncated file,
genomics, clinical; no CT to save time): ingest with a tiny encoder, cross-validation of a clinical
model, HEEC on slide features and PORPOISE on the tile bags, and the signature fan-out.  The tests
parse the written HTML and check its numbers against the store's files, lifelines and MLflow.  Tests
on that fixture are marked ``integration`` (they start Ray and run the stages); the missing-inputs and
heat-grid tests are plain unit tests.
"""

from __future__ import annotations

import base64
import io
import re
import runpy
import sys
from html.parser import HTMLParser
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import ray
from lifelines.statistics import logrank_test
from PIL import Image
from tables_testdata import write_tables_cohort

from mmray.cli import main
from mmray.config import load_config
from mmray.features.gmt import read_gmt
from mmray.ingest.run import IngestConfig, run_ingest
from mmray.registry.config import RegistryConfig
from mmray.registry.registry import Registry
from mmray.registry.signatures import ALL_GENES, SignaturesConfig, run_signatures
from mmray.report.build import write_report
from mmray.report.heatmaps import heat_grid, peak_level0
from mmray.store import FeatureStore
from mmray.synth import cohort as cohort_mod
from mmray.train.config import TrainJobConfig
from mmray.train.cv import run_train

WSI = ["wsi.encoder.name=resnet10t", "wsi.encoder.input_px=32", "wsi.target_mpp=1.0", "wsi.tile_px=128",
       "wsi.region_px=512", "wsi.encoder.batch_size=32", "wsi.progress_interval_s=0", "wsi.nuclei.enabled=true",
       "wsi.nuclei.max_tiles_per_slide=4", "wsi.tile_filter.min_positive_tiles=5"]
TRAIN = ["folds.n_folds=2", "train.val_fraction=0.34", "train.executor=local", "lgbm.executor=local",
         "train.max_epochs=3", "train.patience=2", "n_boot=20", "train.batch_size=32", "mlflow.enabled=false",
         "run_name=r1", ("models=[{name: single, sets: [clinical]}, {name: heec, sets: [slide], hparams: {screen_alpha: 1.0, min_child_samples: 1, bagging_fraction: 1.0}}, "
                         "{name: porpoise, sets: [path_omics]}]"),
         "modality_sets={clinical: [clinical], slide: [slide], path_omics: [tiles, clinical]}",
         "preprocess.screen={slide: {max_p: 1.0, top_k: 16}}"]
# HEEC sees ~5 training rows per fold here (8, less the validation split): no random-encoder slide feature
# reaches its screen's p < 0.05 and its default min_child_samples allows no split, so the test loosens both
# for HEEC to use located (extremum) features that the heatmaps can draw
EXTRA = {"timings": [("synth", 12.5, "ran", "16 patients"), ("ingest", 30.25, "ran", "1 input failed"),
                     ("tune", 0.0, "skipped", "same config already tuned")],
         "serve": {"url": "http://127.0.0.1:8000", "models": ["sig__ALL_GENES"], "errors": 1,
                   "queries": [{"model": "sig__ALL_GENES", "status": 200, "latency_ms": 12.5, "risk": [0.25, -1.5]},
                               {"model": "nope", "status": 404, "latency_ms": 3.0, "risk": None}]},
         "pipeline_config": {"stages": ["synth", "ingest", "train", "report"]}}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A store after ingest, train and signatures on a 16-patient cohort; the report written once."""
    root = tmp_path_factory.mktemp("report_run")
    with mock.patch.object(cohort_mod, "write_ct", lambda *a, **k: []):
        cohort_mod.write_cohort(root / "cohort", patients=16, seed=4, profile="tiny", corrupt=1)
    cohort, store = str(root / "cohort" / "cohort.yaml"), str(root / "store")
    ray.init(num_cpus=2, object_store_memory=1_500_000_000, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        try:
            run_ingest(load_config(IngestConfig, None, [f"cohort={cohort}", f"store={store}",
                                                        "modalities=[clinical,expression,mutations,cnv,wsi]", *WSI]))
            run_train(load_config(TrainJobConfig, None, [f"store={store}", *TRAIN]))
            first = next(iter(read_gmt(str(root / "cohort" / "signatures.gmt"))[0]))
            run_signatures(load_config(SignaturesConfig, None, [f"cohort={cohort}", f"store={store}", "n_folds=2",
                                                                "n_boot=20", f"only=[{first},{ALL_GENES}]"]))
        finally:
            ray.shutdown()
        out = write_report(store, root / "report.html", cohort=cohort, extra=EXTRA)
        yield {"root": root, "store": FeatureStore(store), "cohort": cohort, "out": out, "doc": parse(out.read_text())}


# ------------------------------------------------------------------ a small DOM of the report
VOID = {"meta", "img", "br", "hr", "input", "link", "source", "col", "wbr"}


class Doc(HTMLParser):
    """Sections (id -> status, tables, images, figures' data-* attributes, text) and a tag-balance check."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.sections, self.hrefs, self.tags = [], [], {}, [], set()
        self.cur = self.table = self.row = self.cell = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if tag not in VOID:
            self.stack.append(tag)
        if tag == "section":
            self.cur = self.sections[a["id"]] = {"status": a["data-status"], "tables": [], "imgs": [], "figures": [],
                                                 "text": []}
        elif self.cur is None:
            pass
        elif tag == "table":
            self.table = []
            self.cur["tables"].append(self.table)
        elif tag == "tr":
            self.row = []
            self.table.append(self.row)
        elif tag in ("td", "th"):
            self.cell = []
        elif tag == "img":
            self.cur["imgs"].append(a["src"])
        elif tag == "figure" and any(k.startswith("data-") for k in a):
            self.cur["figures"].append({k[5:]: v for k, v in a.items() if k.startswith("data-")})
        if tag == "a":
            self.hrefs.append(a.get("href", ""))

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
        else:
            self.stack.pop()
        if tag in ("td", "th") and self.cell is not None:
            self.row.append("".join(self.cell).strip())
            self.cell = None
        elif tag == "section":
            self.cur = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)
        if self.cur is not None:
            self.cur["text"].append(data)


def parse(text: str) -> Doc:
    doc = Doc()
    doc.feed(text)
    doc.close()
    doc.raw = text
    return doc


def rows_of(table: list[list[str]]) -> list[dict]:
    head, *body = table
    return [dict(zip(head, r)) for r in body]


def text_of(doc: Doc, sid: str) -> str:
    return " ".join(" ".join(doc.sections[sid]["text"]).split())


# ------------------------------------------------------------------ the whole report
@pytest.mark.integration
def test_every_section_is_filled_and_the_file_is_self_contained(run):
    doc = run["doc"]
    want = ["overview", "failures", "leakage", "bias", "results", "ablation", "paired", "encoders", "kaplan-meier",
            "multitask", "gnn-ablation", "interpretation", "signatures", "extremum-heatmaps", "attention-heatmaps",
            "slide-overlays", "run", "serving"]
    # this run has no graph model (tests/train/test_gnn_pipeline.py) and no pretrained encoder (tests/train/pretrain)
    gnn = ("encoders", "multitask", "gnn-ablation", "interpretation")
    assert list(doc.sections) == want
    assert {s: v["status"] for s, v in doc.sections.items()} == {s: "missing" if s in gnn else "filled" for s in want}
    assert "ray_jobs/configs/gnn.yaml" in text_of(doc, "gnn-ablation")
    assert doc.raw.startswith("<!DOCTYPE html>") and not doc.errors and not doc.stack
    assert [h for h in doc.hrefs] == [f"#{s}" for s in want]  # the table of contents, nothing external
    assert not {"script", "link", "iframe", "object", "embed"} & doc.tags
    assert not re.search(r'(src|href)="(?!data:image/png;base64,|#)', doc.raw)  # nothing fetched from elsewhere
    for sid in ("overview", "bias", "ablation", "kaplan-meier", "extremum-heatmaps", "attention-heatmaps",
                "slide-overlays", "run"):
        assert doc.sections[sid]["imgs"], f"{sid} has no plot"
    for sid, sec in doc.sections.items():
        for src in sec["imgs"]:
            assert src.startswith("data:image/png;base64,")
            img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
            assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100
    assert 100_000 < run["out"].stat().st_size < 10_000_000


@pytest.mark.integration
def test_overview_coverage_and_failures_come_from_the_store(run):
    st, doc = run["store"], run["doc"]
    labels = st.read_table("labels")
    text = text_of(doc, "overview")
    assert f"patients with labels {labels['patient_id'].nunique()}" in text
    assert f"events {int((labels['event'] == 1).sum())}" in text
    coverage = {r["modality"]: r for r in rows_of(doc.sections["overview"]["tables"][1])}
    for modality, group in (("clinical", "clinical"), ("expression", "expression"), ("cnv", "cnv"),
                            ("slides (WSI)", "wsi_patient")):
        assert int(coverage[modality]["patients"]) == st.read_table(group, columns=["patient_id"]).shape[0]
    assert coverage["CT radiomics"]["group"] == "radiomics (not ingested)"
    failures = st.failures()
    assert len(failures) == 1 and int(coverage["slides (WSI)"]["failed inputs"]) == 1
    (row,) = rows_of(doc.sections["failures"]["tables"][0])
    assert (row["stage"], row["patient"], row["input"]) == (failures["stage"][0], failures["patient_id"][0],
                                                            failures["item"][0])
    assert "truncated" in row["reason"]


@pytest.mark.integration
def test_leakage_and_bias_findings_are_the_stored_reports(run):
    from mmray.report.render import read_report

    leak, bias = read_report(run["store"], "leakage"), read_report(run["store"], "bias")
    assert leak["flagged"] and all(c in text_of(run["doc"], "leakage") for c in leak["flagged"])
    rows = rows_of(run["doc"].sections["leakage"]["tables"][0])
    assert [r["column"] for r in rows] == [c["column"] for c in leak["columns"]]
    text = text_of(run["doc"], "bias")
    assert all(a["attribute"] in text for a in bias["attributes"])


@pytest.mark.integration
def test_results_table_equals_the_summary(run):
    summary = pd.read_parquet(run["root"] / "store" / "_results" / "r1" / "summary.parquet")
    tables = run["doc"].sections["results"]["tables"]
    detail = rows_of(tables[1])
    assert len(detail) == len(summary) == 3
    for r in detail:
        s = summary[(summary["model"] == r["model"]) & (summary["modality_set"] == r["modality set"])].iloc[0]
        assert r["folds ok"] == f"{s['n_folds_ok']}/{s['n_folds']}"
        for col, key in (("harrell_c mean", "harrell_c_mean"), ("harrell_c sd", "harrell_c_sd"),
                         ("CI low", "harrell_c_ci_low"), ("CI high", "harrell_c_ci_high")):
            assert r[col] == (f"{s[key]:.3f}" if np.isfinite(s[key]) else "–"), (col, r)
    grid = {r["model"]: r for r in rows_of(tables[0])}
    heec = summary[summary["model"] == "heec"].iloc[0]
    assert grid["heec"]["slide"] == f"{heec['harrell_c_mean']:.3f} ± {heec['harrell_c_sd']:.3f}"


@pytest.mark.integration
def test_paired_table_is_the_runs_paired_csv(run):
    paired = pd.read_csv(run["root"] / "store" / "_results" / "r1" / "paired.csv")
    (table,) = run["doc"].sections["paired"]["tables"]
    rows = rows_of(table)
    assert len(rows) == len(paired) == 2  # 3 summary rows, one of them the baseline
    for r, (_, p) in zip(rows, paired.iterrows()):
        assert (r["model"], r["modality set"], r["folds"]) == (p["model"], p["modality_set"], str(p["n_pairs"]))
        assert r["mean difference"] == (f"{p['mean_diff']:.3f}" if np.isfinite(p["mean_diff"]) else "–")
    assert f"baseline {paired['baseline'].iloc[0]}" in text_of(run["doc"], "paired")


@pytest.mark.integration
def test_km_logrank_p_is_lifelines_on_the_best_models_out_of_fold_risks(run):
    store = run["root"] / "store" / "_results" / "r1"
    summary, preds = pd.read_parquet(store / "summary.parquet"), pd.read_parquet(store / "predictions.parquet")
    ok = summary[summary["n_folds_ok"] > 0]
    best = ok.loc[ok["harrell_c_mean"].idxmax()]
    (fig,) = run["doc"].sections["kaplan-meier"]["figures"]
    assert (fig["model"], fig["modality-set"]) == (best["model"], best["modality_set"])
    p = preds[(preds["model"] == best["model"]) & (preds["modality_set"] == best["modality_set"])]
    pct = p.groupby("fold")["risk"].rank(pct=True)
    high = (pct >= np.quantile(pct, 0.5)).to_numpy()  # the median patient goes to the high group
    t, e = p["time_days"].to_numpy(float), p["event"].astype(bool).to_numpy()
    expected = logrank_test(t[~high], t[high], e[~high], e[high]).p_value
    assert float(fig["logrank-p"]) == pytest.approx(expected, rel=1e-9)
    assert int(fig["n"]) == len(p)


@pytest.mark.integration
def test_signature_table_is_the_registrys(run):
    reg = Registry(RegistryConfig(), store=run["store"].uri)
    runs = reg.client.search_runs([reg.experiment_id], max_results=100)
    outcome = {r.data.tags["mmray.signature"]: r.data.tags["mmray.outcome"] for r in runs}
    rows = {r["signature"]: r for r in rows_of(run["doc"].sections["signatures"]["tables"][0])}
    assert set(rows) == set(outcome) and ALL_GENES in rows and len(rows) == 2
    for sig, o in outcome.items():
        text = rows[sig]["registered / why not"]
        assert text.startswith("registered sig__") if o == "registered" else text.startswith("not registered: ")
        r = next(r for r in runs if r.data.tags["mmray.signature"] == sig)
        assert rows[sig]["C-index (folds)"].startswith(f"{r.data.metrics['harrell_c_mean']:.3f}")
        assert rows[sig]["genes found"].startswith(r.data.tags["mmray.signature.n_genes_found"] + " of ")


def _box_contains(box, x, y, slack):
    """(x, y) inside the box, give or take ``slack`` (one thumbnail pixel: the peak is a pixel's centre)."""
    inside_x = box["x"] - slack <= x <= box["x"] + box["size"] + slack
    return inside_x and box["y"] - slack <= y <= box["y"] + box["size"] + slack


@pytest.mark.integration
def test_extremum_heatmap_peak_is_the_top_traced_location(run):
    """Recompute from the store: mean HEEC gain of the top located slide features, the patient's argmax/argmin
    coordinates of each in ``wsi_patient``, gains summed per location: the peak sits on the best location."""
    st = run["store"]
    imp = pd.read_parquet(run["root"] / "store" / "_results" / "r1" / "importances.parquet")
    n_folds = pd.read_parquet(run["root"] / "store" / "_results" / "r1" / "summary.parquet").query(
        "model == 'heec'")["n_folds_ok"].iloc[0]
    gain = imp.groupby("feature")["gain"].sum() / n_folds
    pat = re.compile(r"^wsi_patient__(tile|region)_(max|min)_(\d+)$")
    nuc = re.compile(r"^wsi_nuclei_patient__(.+)_(max|min)$")  # nucleus features: the tile of the extremum
    top = [f for f in gain.sort_values(ascending=False, kind="stable").index
           if (pat.match(f) or nuc.match(f)) and gain[f] > 0][:10]
    assert top, "HEEC used located slide features"
    figs = run["doc"].sections["extremum-heatmaps"]["figures"]
    assert figs and all(f["kind"] == "extremum" for f in figs)
    table = st.read_table("wsi_patient").set_index("patient_id")
    nuclei = st.read_table("wsi_nuclei_patient").set_index("patient_id")
    for fig in figs:
        rec, locs = table.loc[fig["patient"]], {}
        for f in top:
            if nuc.match(f):
                name, stat = nuc.match(f).groups()
                r = nuclei.loc[fig["patient"]]
                if r[f"{name}_arg{stat}_slide"] == fig["slide"] and int(r[f"{name}_arg{stat}_x"]) >= 0:
                    key = ("tile", int(r[f"{name}_arg{stat}_x"]), int(r[f"{name}_arg{stat}_y"]))
                    locs[key] = locs.get(key, 0.0) + gain[f]
                continue
            scale, stat, i = pat.match(f).groups()
            i = int(i)
            if rec[f"{scale}_arg{stat}_slide"][i] == fig["slide"]:
                key = (scale, int(rec[f"{scale}_arg{stat}_x"][i]), int(rec[f"{scale}_arg{stat}_y"][i]))
                locs[key] = locs.get(key, 0.0) + gain[f]
        planned = st.read_bag("wsi_tiles", fig["slide"])  # every location is a tile or region on tissue
        assert set(locs) <= set(zip(planned["scale"], planned["x"].astype(int), planned["y"].astype(int)))
        (scale, x, y), _ = max(locs.items(), key=lambda kv: kv[1])
        tiles = st.read_bag("wsi_tiles", fig["slide"])
        size = float(tiles.loc[tiles["scale"] == scale, "size_l0"].iloc[0])
        ds = float(fig["downsample"])
        assert _box_contains({"x": x, "y": y, "size": size}, float(fig["peak-x"]), float(fig["peak-y"]), ds)


@pytest.mark.integration
def test_attention_heatmap_peak_is_the_most_attended_tile(run):
    att = pd.read_parquet(run["root"] / "store" / "_results" / "r1" / "attention.parquet")
    st = run["store"]
    # the train hook: every held-out patient's tiles, attention summing to 1 per patient
    assert set(att["model"]) == {"porpoise"}
    np.testing.assert_allclose(att.groupby("patient_id")["attention"].sum(), 1.0, rtol=1e-5)
    pid = att["patient_id"].iloc[0]
    n_tiles = sum(int((st.read_bag("wsi_tiles", s)["scale"] == "tile").sum())
                  for s in att.loc[att["patient_id"] == pid, "slide_id"].unique())
    assert (att["patient_id"] == pid).sum() == n_tiles
    figs = run["doc"].sections["attention-heatmaps"]["figures"]
    assert len({f["patient"] for f in figs}) == 2  # the highest- and lowest-risk held-out patients
    for fig in figs:
        mine = att[(att["patient_id"] == fig["patient"]) & (att["slide_id"] == fig["slide"])]
        top = mine.loc[mine["attention"].idxmax()]
        assert _box_contains({"x": top["x"], "y": top["y"], "size": top["size_l0"]}, float(fig["peak-x"]),
                             float(fig["peak-y"]), float(fig["downsample"]))


@pytest.mark.integration
def test_slide_overlays_show_nuclei_and_tumour_probability_of_the_extreme_patients(run):
    st = run["store"]
    figs = run["doc"].sections["slide-overlays"]["figures"]
    kinds = [f["kind"] for f in figs]
    assert kinds.count("nuclei") == kinds.count("nuclei-zoom") == len({f["patient"] for f in figs}) == 2
    for fig in (f for f in figs if f["kind"] == "nuclei"):
        tiles = st.read_bag("wsi_nuclei", fig["slide"])
        assert int(fig["tiles"]) == len(tiles)
        top = tiles.loc[tiles["density_per_mm2"].idxmax()]
        assert _box_contains({"x": top["x"], "y": top["y"], "size": top["size_l0"]}, float(fig["peak-x"]),
                             float(fig["peak-y"]), float(fig["downsample"]))
    for fig in (f for f in figs if f["kind"] == "nuclei-zoom"):
        tiles = st.read_bag("wsi_nuclei", fig["slide"])
        assert int(fig["nuclei"]) == len(tiles.loc[tiles["density_per_mm2"].idxmax(), "nucleus_x"])
    for fig in (f for f in figs if f["kind"] == "tumour"):  # when the filter ran (annotated slides of 2+ patients)
        t = st.read_bag("wsi_tumour", fig["slide"])
        t = t[t["scale"] == "tile"]
        assert int(fig["tiles"]) == len(t)
        threshold = st.manifest("wsi_tumour")["params"]["threshold"]
        assert int(fig["kept"]) == int((t["tumour_probability"] >= threshold).sum())
    assert ("wsi_tumour" in st.groups()) == ("tumour" in kinds)
    assert "Site signature" in text_of(run["doc"], "leakage")


@pytest.mark.integration
def test_run_and_serving_sections_show_the_pipeline_extra(run):
    rows = rows_of(run["doc"].sections["run"]["tables"][0])
    assert [(r["stage"], r["status"], r["seconds"]) for r in rows] == [("synth", "ran", "12.500"),
                                                                       ("ingest", "ran", "30.250"),
                                                                       ("tune", "skipped", "0.000")]
    assert "3 stage(s) in 42.8 s" in text_of(run["doc"], "run")
    q = rows_of(run["doc"].sections["serving"]["tables"][0])
    assert [(r["model"], r["HTTP status"], r["predicted risk or error"]) for r in q] == [
        ("sig__ALL_GENES", "200", "0.250, -1.500"), ("nope", "404", "")]
    assert "1 of 2 prediction request(s) answered 200, 1 error(s)" in text_of(run["doc"], "serving")


# ------------------------------------------------------------------ missing inputs, CLI, ray job
def test_missing_inputs_say_which_command_makes_them(tmp_path):
    write_tables_cohort(tmp_path / "cohort", patients=8, seed=1)
    store = str(tmp_path / "store")
    run_ingest(load_config(IngestConfig, None, [f"cohort={tmp_path / 'cohort' / 'cohort.yaml'}", f"store={store}"]))
    doc = parse(write_report(store, tmp_path / "r.html").read_text())
    status = {s: v["status"] for s, v in doc.sections.items()}
    assert status == {"overview": "filled", "failures": "filled", "leakage": "filled", "bias": "filled",
                      "results": "missing", "ablation": "missing", "paired": "missing", "encoders": "missing",
                      "kaplan-meier": "missing", "multitask": "missing", "gnn-ablation": "missing", "interpretation": "missing",
                      "signatures": "missing", "extremum-heatmaps": "missing", "attention-heatmaps": "missing",
                      "slide-overlays": "missing"}
    for sid in ("results", "ablation", "paired", "kaplan-meier", "interpretation", "extremum-heatmaps",
                "attention-heatmaps"):
        assert f"mmray train --config ray_jobs/configs/train.yaml --store {store}" in text_of(doc, sid)
    assert f"mmray signatures --cohort COHORT.yaml --store {store}" in text_of(doc, "signatures")
    assert "No failures recorded" in text_of(doc, "failures")
    empty = parse(write_report(str(tmp_path / "empty"), tmp_path / "e.html").read_text())
    assert {v["status"] for v in empty.sections.values()} <= {"missing", "filled"}
    assert "mmray ingest --cohort COHORT.yaml" in text_of(empty, "overview")


@pytest.mark.integration
def test_cli_and_ray_job_write_the_report(run, tmp_path, capsys, monkeypatch):
    store = run["store"].uri
    assert main(["report", "--store", store, "--out", str(tmp_path / "cli.html"), "--run", "r1"]) == 0
    assert f"report written to {tmp_path / 'cli.html'}" in capsys.readouterr().out
    doc = parse((tmp_path / "cli.html").read_text())
    assert doc.sections["results"]["status"] == "filled" and "run" not in doc.sections
    monkeypatch.setattr(sys, "argv", ["report.py", "--config", "ray_jobs/configs/report.yaml", f"store={store}",
                                      f"out={tmp_path / 'job.html'}", f"cohort={run['cohort']}"])
    with pytest.raises(SystemExit) as code:
        runpy.run_path("ray_jobs/report.py", run_name="__main__")
    assert code.value.code == 0
    job = parse((tmp_path / "job.html").read_text())
    assert {job.sections[s]["status"] for s in ("overview", "signatures", "extremum-heatmaps")} == {"filled"}
    assert "Cohort synth-tiny-16p-seed4" in text_of(job, "overview")


@pytest.mark.integration
def test_a_store_on_s3_gets_its_report_and_a_copy_inside(run, s3_env, tmp_path, monkeypatch):
    import pyarrow.fs as pafs

    from mmray import uri as uri_mod

    fs = uri_mod.s3_filesystem()
    pafs.copy_files(str(run["root"] / "store"), s3_env[len("s3://"):] + "/store",
                    destination_filesystem=fs)
    monkeypatch.chdir(tmp_path)  # an S3 store's report lands in the working folder (and in the store)
    out = write_report(s3_env + "/store", cohort=run["cohort"])
    assert out == tmp_path / "report.html"
    doc = parse(out.read_text())
    assert {doc.sections[s]["status"] for s in ("overview", "failures", "results", "kaplan-meier",
                                                 "extremum-heatmaps", "attention-heatmaps")} == {"filled"}
    with fs.open_input_stream(s3_env[len("s3://"):] + "/store/_reports/report.html") as f:
        assert f.read().decode() == out.read_text()


def test_heat_grid_peak_lies_in_the_highest_box():
    boxes = pd.DataFrame({"x": [0, 512, 1024, 1024], "y": [0, 256, 768, 768], "size": [1024, 256, 256, 1024],
                          "value": [1.0, 5.0, 2.0, 1.5]})
    grid = heat_grid(boxes, shape=(100, 120), downsample=(20.0, 20.0))
    x, y = peak_level0(grid, (20.0, 20.0))  # the centre of a grid cell: within one cell of the box
    assert 512 - 20 <= x <= 768 + 20 and 256 - 20 <= y <= 512 + 20 and np.nanmax(grid) == 5.0
    assert grid[40, 55] == 2.0  # a tile inside a bigger box keeps the larger value, never a sum
    assert np.isnan(grid[99, 0]) and peak_level0(np.full((3, 3), np.nan), (1.0, 1.0)) is None
