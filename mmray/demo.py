"""``make demo``: run every stage that exists on a synthetic cohort, say which don't yet."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mmray.cli import EXIT_OK
from mmray.cohort import load_cohort


@dataclass(frozen=True)
class Stage:
    name: str
    issue: str
    built: bool  # runs in this demo
    what: str
    exists: bool = False  # built as a command, but not yet part of the demo


# The data flow of DESIGN.md, in order, with what exists today.
STAGES: tuple[Stage, ...] = (
    Stage("synth", "#2", True, "synthetic cohort in real file formats + truth.json"),
    Stage("validate", "#2", True, "cohort.yaml and every file it names"),
    Stage("ingest wsi", "#3", False, "tiles, encoder pools, extremum encoding", exists=True),
    Stage("ingest ct", "#4", False, "DICOM + SEG volumes, radiomics", exists=True),
    Stage("store + tables", "#5", True, "feature store, genomics/clinical, leakage and bias reports"),
    Stage("train + tune", "#6", False, "fusion models, cross-validation, Ray Tune"),
    Stage("registry + serve", "#7", False, "MLflow gates, signature fan-out, Ray Serve", exists=True),
    Stage("report", "#8", False, "HTML report, cluster jobs"),
)


def _timed(label: str, fn: Callable[[], str], timings: list[tuple[str, float, str]]) -> None:
    print(f"==> {label}", flush=True)
    start = time.perf_counter()
    detail = fn()
    timings.append((label, time.perf_counter() - start, detail))
    print(f"    {detail}", flush=True)


def run_demo(*, out_dir: str | Path, profile: str, patients: int | None, seed: int) -> int:
    from mmray.synth.cohort import write_cohort

    out = Path(out_dir)
    cohort_dir = out / "cohort"
    timings: list[tuple[str, float, str]] = []
    _timed("synth", lambda: write_cohort(cohort_dir, patients=patients, seed=seed, profile=profile,
                                         corrupt=4).summary(), timings)

    def validate() -> str:
        cohort = load_cohort(cohort_dir / "cohort.yaml")
        manifest = cohort.manifest()
        n_patients = manifest["patient_id"].nunique()
        by_mod = manifest.groupby("modality")["patient_id"].nunique().to_dict()
        return (f"cohort {cohort.spec.name}: parts {', '.join(cohort.modalities())}; "
                f"patients with images {n_patients} {by_mod}")

    _timed("validate", validate, timings)

    def tables() -> str:
        from mmray.ingest.run import IngestConfig, run_ingest

        reports = run_ingest(IngestConfig(cohort=str(cohort_dir / "cohort.yaml"), store=str(out / "store"),
                                          modalities=("clinical", "expression", "mutations", "cnv")),
                             progress=lambda line: print(line, flush=True))
        groups = ", ".join(f"{g}@{v}" for r in reports for g, v in r.groups.items())
        failed = sum(len(r.failures) for r in reports)
        return f"store {out / 'store'}: {groups or 'up to date'}; {failed} malformed input(s) recorded"

    _timed("store + tables", tables, timings)

    print("\nStages")
    print(f"  {'stage':<18} {'issue':<6} {'status':<12} what")
    for s in STAGES:
        status = "ran" if s.built else ("command only" if s.exists else "not built yet")
        print(f"  {s.name:<18} {s.issue:<6} {status:<12} {s.what}")
    print("\nTimings")
    for label, seconds, _ in timings:
        print(f"  {label:<18} {seconds:8.1f} s")
    print(f"\nCohort written to {cohort_dir.resolve()} (truth.json holds the planted effects).")
    return EXIT_OK
