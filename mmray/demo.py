"""``make demo``: the ``demo`` synthetic cohort through every stage of the pipeline, then a summary.

The settings live in ``ray_jobs/configs/demo.yaml`` (a pipeline config sized
for 2 CPU cores; its header says where the time goes). This module points
that config at one work folder (cohort in ``<out>/cohort``, store in
``<out>/store``), applies ``--profile/--patients/--seed``, runs
:func:`mmray.pipeline.run_pipeline` on the Ray the CLI started, and prints
per-stage timings, the served predictions and where ``report.html`` is.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from mmray.config import build, deep_merge, load_yaml
from mmray.pipeline import PipelineConfig, PipelineReport, run_pipeline

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "ray_jobs" / "configs" / "demo.yaml"


def demo_config(*, out_dir: str | Path, profile: str | None = None, patients: int | None = None,
                seed: int | None = None, config: str | Path = DEMO_CONFIG) -> PipelineConfig:
    """``config`` with its store and cohort in ``out_dir`` (absolute: Ray workers may run elsewhere)."""
    out = Path(out_dir).resolve()
    synth = {"out": str(out / "cohort")}
    synth.update({k: v for k, v in (("profile", profile), ("patients", patients), ("seed", seed))
                  if v is not None})
    data = deep_merge(load_yaml(config), {"store": str(out / "store"), "cohort": None, "synth": synth})
    return build(PipelineConfig, data, source=str(config))


def summary(report: PipelineReport, *, cfg: PipelineConfig) -> str:
    """The stage table, the served queries and where the outputs are."""
    lines = ["", "Demo summary", textwrap.indent(report.text(), "  ")]
    serve = report.stage("serve")
    if serve is not None and serve.data.get("queries"):
        lines += ["", f"Served at {serve.data['url']} ({len(serve.data['models'])} model(s)); predictions:"]
        lines += [f"  {_query_line(q)}" for q in serve.data["queries"]]
    lines.append("")
    built = report.stage("report")
    if built is not None and built.status == "ran":
        lines.append(f"Report: {Path(built.data['path']).resolve()}")
    lines.append(f"Cohort: {Path(cfg.synth.out).resolve()} (truth.json holds the planted effects)")
    lines.append(f"Store:  {Path(cfg.store).resolve()} (rerun to skip the stages already done)")
    return "\n".join(lines)


def _query_line(q: dict) -> str:
    """One served prediction: model, HTTP status, latency, predicted risks (or the error)."""
    ms = f"{q['latency_ms']:7.1f} ms" if q.get("latency_ms") is not None else "      - ms"
    result = (f"risk [{', '.join(f'{r:.3f}' for r in q['risk'])}]" if q.get("status") == 200
              else f"error: {q.get('error', '')[:120]}")
    return f"{q['model']:<40} HTTP {q.get('status') or '-':<4} {ms}  {result}"


def run_demo(*, out_dir: str | Path, profile: str | None = None, patients: int | None = None,
             seed: int | None = None) -> int:
    """Run the demo pipeline (Ray already initialised by the CLI) and print its summary; the exit status."""
    cfg = demo_config(out_dir=out_dir, profile=profile, patients=patients, seed=seed)
    print(f"mmray demo: {', '.join(cfg.stages)} ({DEMO_CONFIG.name}); work folder {Path(out_dir).resolve()}",
          flush=True)
    report = run_pipeline(cfg, progress=lambda line: print(line, flush=True))
    print(summary(report, cfg=cfg), flush=True)
    return report.exit_code
