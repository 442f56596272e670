"""Signature fan-out: Ray tasks per signature, shared folds, gate, registration, resume, scale."""

from __future__ import annotations

import json

import pytest
import ray

from mmray.cli import main as cli_main
from mmray.config import load_config
from mmray.registry.config import RegistryConfig
from mmray.registry.registry import Registry
from mmray.registry.signatures import ALL_GENES, SignaturesConfig, run_signatures
from mmray.store import FeatureStore
from mmray.synth.genomics import IMMUNE, PROLIFERATION
from mmray.synth.survival_store import random_gmt, write_survival_cohort, write_survival_groups

GOOD_SETS = {
    "SIG_IMMUNE_CYTOLYTIC": [*IMMUNE, "GNLY"],
    "SIG_PROLIFERATION": [*PROLIFERATION, "CDC20"],
    "HALLMARK_MIXED/SET (v1)": [*IMMUNE[:4], *PROLIFERATION[:4]],
}

# starts Ray (the module fixture every test uses): out of `make test-fast`
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("sigs")
    cohort = write_survival_cohort(root / "cohort", patients=70, seed=1)
    store = str(root / "store")
    write_survival_groups(cohort, store)
    gmt = root / "small.gmt"
    lines = [f"{name}\tdesc\t" + "\t".join(genes) for name, genes in GOOD_SETS.items()]
    lines.append("TOO_FEW_FOUND\tdesc\tCD8A\tNOT_A_GENE_1\tNOT_A_GENE_2\tNOT_A_GENE_3")
    lines.append("BROKEN_LINE_NO_GENES\tdesc")
    gmt.write_text("\n".join(lines) + "\n")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield {"root": root, "cohort": str(cohort), "store": store, "gmt": str(gmt)}
    ray.shutdown()


def _cfg(env, *overrides) -> SignaturesConfig:
    return load_config(SignaturesConfig, None, [f"cohort={env['cohort']}", f"store={env['store']}",
                                                f"gmt={env['gmt']}", "n_boot=50", *overrides])


def _runs(reg: Registry) -> list:
    return reg.client.search_runs([reg.experiment_id], max_results=5000)


def test_fanout_gates_registers_and_resumes(env):
    cfg = _cfg(env)
    report = run_signatures(cfg)
    rows = {r.signature: r for r in report.rows}
    assert set(rows) == {*GOOD_SETS, "TOO_FEW_FOUND", ALL_GENES}
    assert (rows["SIG_PROLIFERATION"].genes_in_set, rows["SIG_PROLIFERATION"].genes_found) == (16, 15)
    assert rows[ALL_GENES].genes_found == 300
    skipped = rows["TOO_FEW_FOUND"].outcome
    assert skipped.outcome == "skipped" and "only 1 of 4 genes" in skipped.reason
    assert report.problems and "BROKEN_LINE_NO_GENES" in report.problems[0]["reason"]
    assert report.exit_code == 3  # a GMT line was unusable: listed, and the exit status says so
    assert not FeatureStore(env["store"]).failures("signatures").empty
    reg = Registry(cfg.registry, store=env["store"])
    threshold = cfg.registry.gate.threshold
    outcomes = set()
    for name, row in rows.items():
        o = row.outcome
        outcomes.add(o.outcome)
        if o.outcome == "skipped":
            continue
        c = o.metrics["harrell_c_mean"]
        assert {f"harrell_c_fold{k}" for k in range(5)} <= set(o.metrics)
        assert "harrell_c_oof_low" in o.metrics and "uno_c_mean" in o.metrics
        champion = reg.champion(o.name)
        if c >= threshold:
            assert o.outcome == "registered" and champion is not None and str(champion.version) == o.version
            assert json.loads(champion.tags["mmray.features"]) == [g for g in GOOD_SETS.get(name, [])
                                                                   if g not in ("GNLY", "CDC20")] or name == ALL_GENES
        else:
            assert o.outcome == "gate_failed" and champion is None
            assert reg.client.get_run(o.run_id).data.tags["mmray.gate_reason"] == f"harrell_c_mean {c:.3f} < 0.55"
    assert {"registered", "gate_failed"} <= outcomes, report.table()
    assert rows["HALLMARK_MIXED/SET (v1)"].outcome.name == "sig__HALLMARK_MIXED_SET__v1_"
    # every model was scored on the same saved folds
    man = FeatureStore(env["store"]).manifest("folds")
    assert man["params"]["n_folds"] == 5 and man["params"]["labels_version"] == "v0001"
    folds = {r.data.tags["mmray.folds"] for r in _runs(reg)}
    assert folds == {f"folds@{man['version']}"}
    text = report.table()
    assert "SIG_IMMUNE_CYTOLYTIC" in text and "±" in text and "skipped: only 1 of 4" in text

    # resume: nothing retrained, nothing new logged
    n_runs = len(_runs(reg))
    again = run_signatures(cfg)
    assert all(r.outcome.resumed for r in again.rows)
    assert {r.signature: r.outcome.outcome for r in again.rows} == {s: r.outcome.outcome for s, r in rows.items()}
    assert len(_runs(reg)) == n_runs
    # --force retrains: new runs, and a registered model gets a second version
    forced = run_signatures(_cfg(env, "force=true", "only=[SIG_IMMUNE_CYTOLYTIC,TOO_FEW_FOUND]"))
    assert not any(r.outcome.resumed for r in forced.rows) and len(forced.rows) == 2
    assert len(_runs(reg)) == n_runs + 2
    imm = {r.signature: r.outcome for r in forced.rows}["SIG_IMMUNE_CYTOLYTIC"]
    before = rows["SIG_IMMUNE_CYTOLYTIC"].outcome
    assert imm.metrics["harrell_c_mean"] == pytest.approx(before.metrics["harrell_c_mean"])  # deterministic
    if before.outcome == "registered":
        assert imm.version == str(int(before.version) + 1) and imm.champion  # equal metric: takes the alias


def test_changed_gate_is_a_new_config(env):
    """Raising the threshold changes the config hash: earlier runs are not reused."""
    cfg = _cfg(env, "registry.gate.threshold=0.99", "only=[SIG_PROLIFERATION]")
    report = run_signatures(cfg)
    (row,) = report.rows
    assert not row.outcome.resumed and row.outcome.outcome == "gate_failed"
    assert "< 0.99" in row.outcome.reason


def test_cli_runs_the_fanout(env, capsys):
    code = cli_main(["signatures", "--cohort", env["cohort"], "--store", env["store"], "--gmt", env["gmt"],
                     "--only", "SIG_IMMUNE_CYTOLYTIC,TOO_FEW_FOUND", "n_boot=50"])
    out = capsys.readouterr().out
    assert code == 3  # the GMT's broken line
    assert "resumed: " in out and "2 signatures:" in out and "TOO_FEW_FOUND" in out
    assert cli_main(["signatures", "--cohort", env["cohort"], "--store", env["store"], "--gmt", env["gmt"],
                     "--only", "NO_SUCH_SET"]) == 1
    assert "no signature 'NO_SUCH_SET'" in capsys.readouterr().err


def test_two_hundred_signatures(env):
    gmt = env["root"] / "random200.gmt"
    names = random_gmt(gmt, n_sets=200, n_genes=300, seed=5, min_size=2, max_size=12)
    cfg = load_config(SignaturesConfig, None, [
        f"cohort={env['cohort']}", f"store={env['store']}", f"gmt={gmt}", "n_boot=0", "all_genes=false",
        "model_prefix=rnd__", "min_genes=3", "registry.experiment=random200"])
    report = run_signatures(cfg)
    assert len(report.rows) == 200 and {r.signature for r in report.rows} == set(names)
    n = report.counts()
    assert n["error"] == 0 and n["registered"] + n["gate_failed"] + n["skipped"] == 200
    assert n["skipped"] > 0 and n["gate_failed"] > 0  # sets of 2 genes skip; random sets mostly fail
    reg = Registry(RegistryConfig(experiment="random200"), store=env["store"])
    assert len(reg.servable(prefix="rnd__")) == n["registered"]
    assert len(report.table().splitlines()) == 202  # header, 200 rows, summary
