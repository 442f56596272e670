"""mm_gnn end to end on a synthetic cohort's tables: ingest (proteins, knowledge, treatment labels) -> train with
the component ablation, multi-task heads and contrastive pretraining -> results files -> report sections.

A few minutes on 2 cores: ``make test-e2e``.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import ray
from tables_testdata import write_tables_cohort

from mmray.cli import main
from mmray.report.build import write_report

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

MODELS = ("[{name: attention_fusion, sets: [omics]},"
          " {name: mm_gnn, sets: [omics], ablation: true,"
          "  hparams: {tasks: [survival_cox, response, toxicity], pretrain_epochs: 2, dim: 16},"
          "  preprocess: {top_k_var: {expression: 40, mutations_cnv: 12, proteins: 24},"
          "               screen: {expression: null, mutations_cnv: null}}}]")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    root = tmp_path_factory.mktemp("gnn")
    truth = write_tables_cohort(root / "cohort", patients=70, seed=11)
    store = str(root / "store")
    assert main(["ingest", "--cohort", str(root / "cohort" / "cohort.yaml"), "--store", store, "--modalities",
                 "clinical,expression,mutations,cnv,proteins,knowledge"]) == 0
    out = root / "out"
    code = main(["train", "--config", "ray_jobs/configs/gnn.yaml", "--store", store, f"output={out}", "run_name=gnn",
                 "folds.n_folds=3", "train.max_epochs=4", "train.patience=4", "n_boot=20", "mlflow.enabled=false",
                 "modality_sets={omics: [clinical, expression, mutations_cnv, proteins]}", f"models={MODELS}",
                 "interpret.models=[mm_gnn, attention_fusion]", "interpret.ig_steps=8"])
    yield root, truth, store, out, code
    ray.shutdown()


def test_train_writes_ablation_multitask_graph_and_interpretation(run):
    root, truth, store, out, code = run
    assert code == 0
    summary = pd.read_parquet(out / "summary.parquet")
    assert set(summary["model"]) == {"attention_fusion", "mm_gnn", "mm_gnn-no_intra", "mm_gnn-no_fusion",
                                     "mm_gnn-no_contrastive", "mm_gnn-no_multitask"}
    assert (summary["n_folds_ok"] == 3).all()
    abl = pd.read_csv(out / "gnn_ablation.csv").set_index("variant")
    assert list(abl.index) == ["full", "no_intra", "no_fusion", "no_contrastive", "no_multitask"]
    assert abl.loc["full", "delta_vs_full"] == 0 and abl["mean"].between(0, 1).all()
    assert abl.loc["full", ["response_accuracy_mean", "toxicity_auroc_mean"]].notna().all()
    assert pd.isna(abl.loc["no_multitask", "response_accuracy_mean"])  # no response head, no response metric
    results = pd.read_parquet(out / "results.parquet")
    full = results[results["model"] == "mm_gnn"]
    assert full["response_accuracy"].between(0, 1).all() and full["toxicity_auroc"].notna().any()
    assert (full["task_weight_response"] > 0).all() and (full["pretrain_epochs"] == 2).all()
    assert (full["pretrain_loss_last"] < full["pretrain_loss_first"]).mean() >= 2 / 3  # InfoNCE goes down
    assert results.loc[results["model"] == "mm_gnn-no_contrastive", "pretrain_epochs"].isna().all()
    preds = pd.read_parquet(out / "predictions.parquet")
    p = preds[preds["model"] == "mm_gnn"]
    assert {"response_p0", "toxicity_p_grade3plus_fatigue"} <= set(p.columns)
    edges = pd.read_parquet(out / "graph_edges.parquet")
    assert set(edges["fold"]) == {0, 1, 2} and "gene|ppi|gene" in set(edges["relation"])
    ranking = pd.read_csv(out / "gene_ranking.csv")
    assert set(ranking["model"]) == {"mm_gnn", "attention_fusion"}
    enr = pd.read_csv(out / "enrichment.csv")
    assert enr["fdr"].between(0, 1).all() and "SIG_PROLIFERATION" in set(enr["set_name"])
    mod = pd.read_csv(out / "modality_summary.csv")
    assert set(mod["method"]) == {"masking_drop", "attention"}
    meta = json.loads((out / "results.json").read_text())
    assert {"gnn_ablation", "gene_ranking", "enrichment"} <= set(meta)


def test_report_shows_the_new_sections_with_the_truth(run):
    root, truth, store, out, code = run
    import shutil

    from mmray.store import FeatureStore

    fs_results = root / "store" / "_results" / "gnn"
    if not fs_results.exists():  # output= put the run outside the store: copy it where the report looks
        shutil.copytree(out, fs_results)
    html = write_report(FeatureStore(store), root / "report.html", cohort=str(root / "cohort" / "cohort.yaml"),
                        extra={"train_run": "gnn"}).read_text()
    for sid in ("multitask", "gnn-ablation", "interpretation"):
        assert f'id="{sid}"' in html and f'data-status="filled"' in html.split(f'id="{sid}"')[1][:200]
    assert "Planted survival genes in the top 50" in html and "planted log-hazard weight" in html
    assert "no_contrastive" in html and "toxicity auroc" in html
