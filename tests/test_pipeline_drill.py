"""Drill: SIGKILL ``mmray pipeline`` inside each stage, run it again; the end result equals an uninterrupted run's.

One uninterrupted run of ``ray_jobs/configs/pipeline_tiny.yaml`` (store A) gives
the reference and each stage's duration. Then one chain on store B: run, SIGKILL
the command's process group (its embedded Ray dies with it; stray Ray workers
are found by an environment tag and must go too) part way into stage 1; run
again, kill part way into stage 2; ... ; a last run completes. Each run must
pick up where the killed one stopped (earlier stages skipped, the killed one
redone), and the chain's store, folds, training results, registered models and
report must equal the reference's.

The ``pretrain`` stage is left out of both runs: DINO pretraining on Ray Data is not
bit-reproducible from one run to the next (the tiles reach the trainer in the
order Ray Data's tasks finish), so two runs would give different encoders and
nothing downstream could be compared value for value. Its own kill-and-resume
drill is tests/train/pretrain/test_dino_kill.py.
"""

from __future__ import annotations

import json
import queue
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from drill_procs import CommandRun, Lingering, clean_env

from mmray.pipeline import STAGES as ALL_STAGES
from mmray.store import FeatureStore

STAGES = tuple(s for s in ALL_STAGES if s != "pretrain")  # see the module doc

pytestmark = [pytest.mark.integration, pytest.mark.drill, pytest.mark.slow, pytest.mark.timeout(3600)]
REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "ray_jobs" / "configs" / "pipeline_tiny.yaml")
RUN_TIMEOUT_S = 1200  # one pipeline run, on a busy 2-core machine
RESULT = re.compile(r"^    (ran|skipped|failed): (.*) \(([\d.]+) s\)$")
NEVER_SKIPPED = {"serve", "report"}
KILL_FRACTION = 0.4  # of the stage's duration in the uninterrupted run
# Where to kill inside a stage, when not KILL_FRACTION into it: halfway between two of its progress lines
# (ingest: while its slides are embedded, the longest part of it; the tiles are written at the end).
KILL_WINDOWS = {"ingest": ("==> ingest wsi", "==> ingest ct")}


@dataclass
class Progress:
    """What one run printed: each finished stage's status, detail and seconds; where it was killed."""

    stages: dict[str, tuple[str, str, float]] = field(default_factory=dict)
    killed_in: str | None = None
    killed_after_s: float | None = None  # seconds after the stage's "==> stage" line
    lingering: Lingering | None = None
    exit_code: int | None = None
    seconds: float = 0.0


def _follow(run: CommandRun, *, kill_stage: str | None = None, anchor: str | None = None,
            delay_s: float = 0.0) -> Progress:
    """Read ``run``'s progress to its end, or SIGKILL it ``delay_s`` after the ``anchor`` line of ``kill_stage``
    (default: the stage's own ``==> stage`` line)."""
    out, current, entered, anchored = Progress(), None, 0.0, None
    anchor = anchor or f"==> {kill_stage}"
    deadline = run.started + RUN_TIMEOUT_S
    while True:
        now = time.monotonic()
        arming = kill_stage is not None and current == kill_stage and anchored is not None
        try:
            item = run.next_line(min(anchored + delay_s, deadline) - now if arming else deadline - now)
        except queue.Empty:
            if not arming:
                run.kill(linger_wait_s=0)
                pytest.fail(f"no progress for {RUN_TIMEOUT_S} s; log {run.log}:\n{run.text()[-3000:]}")
            out.killed_in, out.killed_after_s = current, time.monotonic() - entered
            out.lingering = run.kill()
            out.seconds = time.monotonic() - run.started
            return out
        if item is None:  # the command ended
            out.exit_code, out.seconds = run.wait(60), time.monotonic() - run.started
            return out
        at, line = item
        if line.startswith("==> ") and line[4:] in STAGES:
            current, entered = line[4:], at
        if current == kill_stage and line == anchor:
            anchored = at
        elif (m := RESULT.match(line)) and current is not None and current not in out.stages:
            out.stages[current] = (m.group(1), m.group(2), float(m.group(3)))
            if current == kill_stage:
                run.kill(linger_wait_s=0)
                pytest.fail(f"stage {kill_stage} finished ({line.strip()}) before the kill at {delay_s:.1f} s; "
                            f"log {run.log}")


def _line_time(run: CommandRun, line: str) -> float:
    return next(at for at, got in run.lines if got == line)


def _args(root: Path, port: int) -> list[str]:
    return ["pipeline", "--config", TINY, f"store={root}/store", f"synth.out={root}/cohort", f"serve.port={port}",
            f"stages=[{', '.join(STAGES)}]"]


# --------------------------------------------------------------------------- comparing two stores


# Columns that name a version of another group (lineage, not values).  A killed writer leaves its reserved
# version folder behind, so a resumed chain may number the same content one higher (v0002 for the reference's
# v0001); such a column must name a committed version of its group in its own store, and is compared no further.
VERSION_COLUMNS = {"tiles_version": "wsi_tiles"}


def _values(store: FeatureStore, group: str) -> pd.DataFrame:
    """The latest version's rows, array cells as lists, in a canonical row order, version columns checked and
    dropped (see ``VERSION_COLUMNS``)."""
    df = store.read_table(group)
    for col, of in VERSION_COLUMNS.items():
        if col in df.columns:
            committed = set(store.versions(of))
            assert set(df[col]) <= committed, (group, col, set(df[col]) - committed)
            df = df.drop(columns=col)
    arrays = [c for c in df.columns if df[c].map(lambda v: isinstance(v, (np.ndarray, list))).any()]
    for c in arrays:
        df[c] = df[c].map(lambda v: np.asarray(v).tolist())
    scalar = [c for c in df.columns if c not in arrays]
    return df.sort_values(scalar, kind="stable").reset_index(drop=True)


def _train_run(progress: Progress) -> str:
    return re.match(r"run (train-\w+)", progress.stages["train"][1]).group(1)


def _fold_results(store: Path, run: str) -> pd.DataFrame:
    df = pd.read_parquet(store / "_results" / run / "results.parquet")
    keep = ["model", "modality_set", "fold", "status", "best_epoch", "epochs_run", "n_fit", "n_val", "n_test",
            "harrell_c", "uno_c", "td_auc", "ibs"]
    return df[keep].sort_values(["model", "modality_set", "fold"]).reset_index(drop=True)


def _registry(store: Path) -> dict:
    """``{"models": {name: {"aliases", "versions", "metrics" (the champion's)}}, "running": [...], "killed": [...]}``."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{store}/_mlflow/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    models = {}
    for rm in client.search_registered_models():
        champion = client.get_model_version_by_alias(rm.name, "champion")
        models[rm.name] = {"aliases": dict(rm.aliases), "versions": len(client.search_model_versions(
            f"name = '{rm.name}'")), "metrics": json.loads(champion.tags.get("mmray.metrics", "{}"))}
    runs = {status: [f"{client.get_experiment(r.info.experiment_id).name}/{r.info.run_name}"
                     for e in client.search_experiments()
                     for r in client.search_runs([e.experiment_id], filter_string=f"attributes.status = '{status}'")]
            for status in ("RUNNING", "KILLED")}
    return {"models": models, "running": runs["RUNNING"], "killed": runs["KILLED"]}


def _assert_same_results(ref_root: Path, chain_root: Path, ref: Progress, final: Progress) -> dict:
    a, b = FeatureStore(ref_root / "store"), FeatureStore(chain_root / "store")
    assert a.groups() == b.groups()
    versions = {}
    for group in a.groups():
        pd.testing.assert_frame_equal(_values(b, group), _values(a, group), check_exact=False, rtol=1e-6,
                                      obj=f"group {group}")
        versions[group] = (a.latest(group), b.latest(group))
    pd.testing.assert_frame_equal(_fold_results(chain_root / "store", _train_run(final)),
                                  _fold_results(ref_root / "store", _train_run(ref)), check_exact=False, rtol=1e-6)
    tune_a, tune_b = (json.loads(next((r / "store" / "_results").glob("tune-*/best.json")).read_text())
                      for r in (ref_root, chain_root))
    assert tune_b["best_config"] == tune_a["best_config"]
    assert tune_b["cv_score"] == pytest.approx(tune_a["cv_score"], rel=1e-6)
    reg_a, reg_b = _registry(ref_root / "store"), _registry(chain_root / "store")
    assert {n: set(m["aliases"]) for n, m in reg_b["models"].items()} == \
        {n: set(m["aliases"]) for n, m in reg_a["models"].items()}
    for name, model in reg_a["models"].items():  # the champions' metrics (not the timings)
        want = {k: v for k, v in model["metrics"].items() if "seconds" not in k}
        got = {k: v for k, v in reg_b["models"][name]["metrics"].items() if "seconds" not in k}
        assert got == pytest.approx(want, rel=1e-6, nan_ok=True), name
    assert reg_b["running"] == [] == reg_a["running"]  # what killed jobs left RUNNING was closed by the reruns
    assert (chain_root / "store" / "_reports" / "report.html").stat().st_size > 10_000
    return {"versions": versions, "registry_ref": reg_a, "registry_chain": reg_b}


# --------------------------------------------------------------------------- the drill


def test_pipeline_killed_in_every_stage_finishes_equal_to_an_uninterrupted_run(tmp_path, free_ports):
    env = clean_env()
    started = time.monotonic()
    ref_root, chain_root = tmp_path / "reference", tmp_path / "chain"
    ref_run = CommandRun(_args(ref_root, free_ports(1)[0]), log=tmp_path / "reference.log", env=env)
    ref = _follow(ref_run)
    assert ref.exit_code == 0 and list(ref.stages) == list(STAGES), (tmp_path / "reference.log").read_text()[-3000:]
    assert all(status == "ran" for status, _, _ in ref.stages.values())

    port = free_ports(1)[0]  # one port for the whole chain: a killed run's Serve must not keep it
    chain: list[Progress] = []
    for i, stage in enumerate(STAGES):
        anchor, delay = f"==> {stage}", max(0.3, KILL_FRACTION * ref.stages[stage][2])
        if stage in KILL_WINDOWS:
            anchor, until = KILL_WINDOWS[stage]
            delay = 0.5 * (_line_time(ref_run, until) - _line_time(ref_run, anchor))
        run = CommandRun(_args(chain_root, port), log=tmp_path / f"kill-{i}-{stage}.log", env=env)
        got = _follow(run, kill_stage=stage, anchor=anchor, delay_s=delay)
        assert got.killed_in == stage, f"run {i} was to be killed in {stage}; log {run.log}"
        assert not got.lingering.killed, f"Ray processes outlived the killed run by 30 s: {got.lingering.killed}"
        _assert_resumed(got, upto=i, log=run.log)
        chain.append(got)
        print(f"\nrun {i}: killed {got.killed_after_s:.1f} s into {stage} ({got.seconds:.0f} s in all); before it: "
              f"{ {s: v[0] for s, v in got.stages.items()} }; lingering {got.lingering}", flush=True)
    final_run = CommandRun(_args(chain_root, port), log=tmp_path / "final.log", env=env)
    final = _follow(final_run)
    assert final.exit_code == 0, final_run.text()[-3000:]
    _assert_resumed(final, upto=len(STAGES), log=final_run.log)
    assert re.search(r"6/6 queries answered", final.stages["serve"][1]), final.stages["serve"]

    same = _assert_same_results(ref_root, chain_root, ref, final)
    _print_figures(ref, chain, final, same, seconds=time.monotonic() - started)


def _assert_resumed(got: Progress, *, upto: int, log: Path) -> None:
    """A run after kills in stages ``< upto``: it skipped what the killed runs had finished and redid the rest."""
    for j, stage in enumerate(STAGES[:upto]):
        status = got.stages.get(stage, ("missing",))[0]
        if stage in NEVER_SKIPPED or j == upto - 1:  # the stage the previous run was killed in: redone (or resumed)
            assert status in ("ran", "skipped"), (stage, got.stages.get(stage), log)
        else:
            assert status == "skipped", (stage, got.stages.get(stage), log)


def _print_figures(ref: Progress, chain: list[Progress], final: Progress, same: dict, *, seconds: float) -> None:
    lines = [(f"\npipeline drill: reference run {ref.seconds:.0f} s "
              f"({', '.join(f'{s} {v[2]:.1f}' for s, v in ref.stages.items())})")]
    runs = [*chain, final]
    for i, stage in enumerate(STAGES):
        killed, rerun = chain[i], runs[i + 1]
        status, detail, secs = rerun.stages[stage]
        linger = killed.lingering
        gone = f"{linger.exited_in_s:.1f} s" if linger.exited_in_s is not None else "never"
        lines.append(f"  {stage:<10} killed {killed.killed_after_s:5.1f} s in (run {killed.seconds:5.1f} s; "
                     f"{linger.at_kill} Ray process(es) outside the group, all gone in {gone}) -> rerun: {status} "
                     f"in {secs:.1f} s: {detail[:110]}")
    lines.append(f"  final run {final.seconds:.0f} s, exit {final.exit_code}: "
                 f"{', '.join(f'{s} {v[0]}' for s, v in final.stages.items())}")
    lines.append(f"  versions (reference, chain): {same['versions']}")
    for name, m in same["registry_chain"]["models"].items():
        lines.append(f"  {name}: aliases {m['aliases']} ({m['versions']} version(s); reference "
                     f"{same['registry_ref']['models'][name]['aliases']})")
    lines.append(f"  MLflow runs a killed job left, closed as KILLED by the reruns: {same['registry_chain']['killed']}; "
                 f"drill total {seconds:.0f} s")
    print("\n".join(lines))
