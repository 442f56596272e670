"""``mmray demo``: ray_jobs/configs/demo.yaml is a valid pipeline config that runs what the issue asks for,
pointed at the work folder; the summary names every stage, the served predictions and the report.

(The demo itself takes minutes on the demo cohort; tests/test_pipeline.py runs the same pipeline code on
the tiny cohort.)
"""

from __future__ import annotations

from pathlib import Path

from mmray.demo import DEMO_CONFIG, demo_config, summary
from mmray.pipeline import STAGES, PipelineReport, StageResult
from mmray.train.config import sets_for


def test_demo_config_runs_every_stage_in_the_work_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = demo_config(out_dir="work")
    assert cfg.stages == STAGES
    assert cfg.store == str(tmp_path / "work" / "store")
    assert cfg.synth.out == str(tmp_path / "work" / "cohort")
    assert cfg.cohort_uri() == str(tmp_path / "work" / "cohort" / "cohort.yaml")
    assert (cfg.synth.profile, cfg.synth.seed, cfg.synth.patients) == ("demo", 7, None)
    assert cfg.ingest_config().cohort == cfg.cohort_uri()


def test_demo_config_trains_baselines_fusion_porpoise_and_heec_on_slides():
    cfg = demo_config(out_dir="/tmp/unused")
    train = cfg.train_config()
    assert train.folds.n_folds == 5
    runs = {(e.name, s): train.modality_sets[s] for e in train.models for s in sets_for(e, train.modality_sets)}
    singles = {mods[0] for (name, _), mods in runs.items() if name == "single"}
    assert singles == {"clinical", "expression", "mutations_cnv", "radiomics", "slide"}
    for fusion in ("early_fusion", "late_fusion", "attention_fusion"):
        assert any(name == fusion and len(mods) >= 3 for (name, _), mods in runs.items()), fusion
    assert any(name == "heec" and "slide" in mods for (name, _), mods in runs.items())
    assert any(name == "porpoise" and "tiles" in mods for (name, _), mods in runs.items())
    tune = cfg.tune_config()
    assert 4 <= tune.search.num_samples <= 6 and tune.refit
    sig = cfg.signatures_config()
    assert sig.all_genes and not sig.only  # every GMT set + ALL_GENES
    assert cfg.serve_extras().queries > 0 and not cfg.serve_extras().keep_running


def test_cli_options_replace_the_synth_section():
    cfg = demo_config(out_dir="/tmp/d", profile="tiny", patients=12, seed=3)
    assert (cfg.synth.profile, cfg.synth.patients, cfg.synth.seed) == ("tiny", 12, 3)
    assert DEMO_CONFIG.is_file()


def test_summary_lists_stages_queries_and_the_report(tmp_path):
    cfg = demo_config(out_dir=tmp_path)
    html = tmp_path / "store" / "_reports" / "report.html"
    serve = {"url": "http://127.0.0.1:8000", "models": ["sig__A", "mmray__attention_fusion"], "errors": 1,
             "queries": [{"model": "sig__A", "status": 200, "latency_ms": 12.5, "risk": [0.25, -1.5]},
                         {"model": "mmray__attention_fusion", "status": None, "latency_ms": None, "risk": [],
                          "error": "no store table has complete rows"}]}
    report = PipelineReport([StageResult("synth", "skipped", 0.2, "cohort already written"),
                             StageResult("serve", "ran", 31.0, "2 model(s)", serve, exit_code=3),
                             StageResult("report", "ran", 4.0, "written", {"path": str(html)})])
    text = summary(report, cfg=cfg)
    assert "  synth       skipped       0.2  cohort already written" in text
    assert "  serve       ran          31.0  2 model(s) (partial)" in text
    assert "pipeline: 3 stage(s) in 35.2 s, exit 3" in text
    assert "HTTP 200" in text and "risk [0.250, -1.500]" in text
    assert "error: no store table has complete rows" in text
    assert f"Report: {html}" in text
    assert str(Path(cfg.synth.out)) in text
