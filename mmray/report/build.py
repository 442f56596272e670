"""``mmray report``: one self-contained HTML file with everything a run produced.

Sections, in the order of the data flow: cohort overview and modality
coverage, failed inputs, target-leakage and bias findings, the
cross-validated results table (model x modality set, mean ± sd over folds,
plus the registered tuned models), the modality ablation, Kaplan-Meier
curves of predicted risk groups with the log-rank test, the multi-task heads,
the graph model's component ablation, the interpretation (modality and gene
importance, pathway enrichment, against the planted truth of a synthetic
cohort), the gene-signature
models, slide heatmaps of HEEC's important extremum features and of
PORPOISE's attention, and -- when the pipeline passes ``extra`` -- the
per-stage timings and the served predictions.

Each section is built on its own: an input that is not there yet (no train
run, no slides, no registry) turns that section into a note naming the
command that makes it, and a section that fails shows its error; the report
is always written.
"""

from __future__ import annotations

import datetime as dt
import html
import logging
import os
import posixpath
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mmray
from mmray import uri as uri_mod
from mmray.errors import StoreError
from mmray.report import (coverage, inputs, performance, run_sections, signature_table, site_signature,
                          slide_overlays, slide_sections)
from mmray.report.interpret_section import gnn_ablation_section, interpretation_section, multitask_section
from mmray.report.paired_section import paired_section
from mmray.report.bias import bias_sections
from mmray.report.encoder_section import encoder_section
from mmray.report.document import InputMissing, Section, error_note, missing_note, page
from mmray.report.federated_section import federated_section, has_federated_run
from mmray.report.leakage import leakage_sections
from mmray.report.render import REPORTS_DIR, read_report
from mmray.store import FeatureStore, fsio

log = logging.getLogger(__name__)
REPORT_NAME = "report.html"


@dataclass(frozen=True)
class ReportConfig:
    """``ray_jobs/configs/report.yaml``."""

    store: str
    out: str | None = None  # default: <store>/_reports/report.html (local store) or ./report.html (S3 store)
    cohort: str | None = None  # cohort.yaml: its name and manifest (slide files, planned inputs)
    run: str | None = None  # train run name under <store>/_results; default the newest


def default_out(store: FeatureStore) -> Path:
    if uri_mod.is_s3(store.uri):
        return Path(REPORT_NAME).resolve()
    return Path(store.uri) / REPORTS_DIR / REPORT_NAME


def _section(id_: str, title: str, build: Callable[[], list[str]]) -> Section:
    try:
        return Section(id_, title, build())
    except InputMissing as e:
        return Section(id_, title, [missing_note(e)], status="missing")
    except Exception as e:  # noqa: BLE001  one broken section must not cost the whole report
        log.error("report section %s failed: %s\n%s", id_, e, traceback.format_exc())
        return Section(id_, title, [error_note(e)], status="error")


def _registry_cfg(extra: dict):
    """The signatures stage's registry settings from the pipeline config, else the defaults."""
    from mmray.registry.config import RegistryConfig

    reg = ((extra.get("pipeline_config") or {}).get("signatures") or {}).get("registry") or {}
    return RegistryConfig(**{k: reg[k] for k in ("tracking_uri", "workdir", "experiment", "alias")
                             if reg.get(k) is not None})


def _stored_report(store: FeatureStore, name: str) -> dict:
    try:
        return read_report(store, name)
    except StoreError as e:
        raise InputMissing(f"no {name} report in {store.uri}", inputs.ingest_command(store, "clinical")) from e


def build_sections(store: FeatureStore, *, cohort: str | None = None,
                   extra: dict | None = None) -> tuple[list[Section], dict]:
    """Every section of the report (module doc), each filled, missing or failed on its own, and facts for
    the page header (``cohort``, ``cohort_note``, ``train_run``)."""
    extra = dict(extra or {})
    manifest = cohort_name = cohort_note = None
    if cohort:
        from mmray.cohort import load_cohort

        try:
            spec = load_cohort(cohort)
            manifest, cohort_name = spec.manifest(), spec.spec.name
        except Exception as e:  # noqa: BLE001  the store alone still makes a report
            log.warning("report: cannot read cohort %s: %s", cohort, e)
            cohort_note = f"cohort {cohort} could not be read ({type(e).__name__}: {e}); reported from the store alone"
    try:
        run: inputs.TrainRun | InputMissing = inputs.load_train_run(store, extra.get("train_run"))
    except InputMissing as e:
        run = e

    def need_run() -> inputs.TrainRun:
        if isinstance(run, InputMissing):
            raise run
        return run

    registry_cfg = _registry_cfg(extra)
    slides: dict[str, str] = {}

    def uris() -> dict[str, str]:
        if not slides:
            slides.update(inputs.slide_uris(store, manifest))
        return slides

    def results() -> list[str]:
        body = performance.results_section(need_run())
        try:
            body += ["<h3>Registered tuned models</h3>",
                     *performance.registered_section(inputs.registered_models(store, registry_cfg))]
        except InputMissing as e:
            body.append(missing_note(e))
        except Exception as e:  # noqa: BLE001  an unreachable registry must not hide the results table
            body.append(error_note(e))
        return body

    specs = [
        ("overview", "Cohort overview and modality coverage",
         lambda: coverage.overview_section(store, cohort_name=cohort_name, manifest=manifest)),
        ("failures", "Failed inputs", lambda: coverage.failures_section(store)),
        ("leakage", "Target leakage findings",
         lambda: leakage_sections(_stored_report(store, "leakage")) + site_signature.stored_sections(store)),
        ("bias", "Bias findings", lambda: bias_sections(_stored_report(store, "bias"), heading="h3")),
        ("results", "Cross-validated results: model x modality set", results),
        ("ablation", "Modality ablation", lambda: performance.ablation_section(need_run())),
        ("paired", "Paired comparison with the best single baseline", lambda: paired_section(need_run())),
        ("encoders", "Slide encoders pretrained on the cohort (DINO)", lambda: encoder_section(store)),
        ("kaplan-meier", "Kaplan-Meier curves of predicted risk groups", lambda: performance.km_section(need_run())),
        ("multitask", "Multi-task heads: response and toxicity", lambda: multitask_section(need_run())),
        ("gnn-ablation", "Graph model: component ablation", lambda: gnn_ablation_section(store, need_run())),
        ("interpretation", "Interpretation: modalities, genes, pathways",
         lambda: interpretation_section(store, need_run(), cohort)),
        ("signatures", "Gene-signature models",
         lambda: signature_table.signatures_section(inputs.signature_runs(store, registry_cfg))),
        ("extremum-heatmaps", "Slide heatmaps: important extremum features",
         lambda: slide_sections.extremum_section(store, need_run(), uris())),
        ("attention-heatmaps", "Slide heatmaps: attention",
         lambda: slide_sections.attention_section(store, need_run(), uris())),
        ("slide-overlays", "Slide overlays: nuclei and tumour probability",
         lambda: slide_overlays.overlay_section(store, need_run(), uris())),
    ]
    if has_federated_run(store):  # a coordinator's store (mmray federated): its rounds and sites
        specs.append(("federated", "Federated training across sites", lambda: federated_section(store)))
    if "timings" in extra:
        specs.append(("run", "Pipeline run: stages and timings", lambda: run_sections.run_section(extra)))
    if "serve" in extra:
        specs.append(("serving", "Serving: predictions over HTTP", lambda: run_sections.serving_section(extra)))
    sections = []
    for id_, title, build in specs:
        log.debug("report: %s", title)
        sections.append(_section(id_, title, build))
    return sections, {"cohort": cohort_name, "cohort_note": cohort_note,
                      "train_run": None if isinstance(run, InputMissing) else run.name}


def write_report(store, out=None, *, cohort: str | None = None, extra: dict | None = None) -> Path:
    """Write the report of ``store`` (a FeatureStore or its URI) to ``out``; returns the file's path.

    ``out`` defaults to :func:`default_out`.  For a store on S3 a copy also
    goes to ``<store>/_reports/report.html``.  ``extra`` (from the pipeline):
    ``timings`` ``[(stage, seconds, status, detail)]``, ``serve`` (the serve
    stage's data), ``pipeline_config`` and optionally ``train_run`` (the run
    to report; default the newest).
    """
    store = store if isinstance(store, FeatureStore) else FeatureStore(str(store))
    out = Path(out) if out else default_out(store)
    sections, facts = build_sections(store, cohort=cohort, extra=extra)
    counts = {k: sum(s.status == k for s in sections) for k in ("filled", "missing", "error")}
    meta = [f"Feature store <code>{html.escape(store.uri)}</code>"
            + (f", cohort <b>{html.escape(facts['cohort'])}</b>" if facts["cohort"] else "")
            + (f", train run <b>{html.escape(facts['train_run'])}</b>" if facts["train_run"] else ", no train run"),
            f"Generated {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')} by mmray "
            f"{html.escape(mmray.__version__)}; sections: " + ", ".join(f"{n} {k}" for k, n in counts.items())]
    if facts["cohort_note"]:
        meta.append(f"<b>Note:</b> {html.escape(facts['cohort_note'])}")
    text = page(title="mmray run report", meta=meta, sections=sections)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)  # a browser never opens a half-written report
    if uri_mod.is_s3(store.uri):
        fs, root = store.filesystem
        fsio.put_bytes(fs, posixpath.join(root, REPORTS_DIR, REPORT_NAME), text.encode("utf-8"))
    log.info("report: %s (%d KiB; %s)", out, out.stat().st_size // 1024, counts)
    return out


def run_report(cfg: ReportConfig) -> Path:
    """The ``mmray report`` / ``ray_jobs/report.py`` job."""
    extra = {"train_run": cfg.run} if cfg.run else None
    return write_report(cfg.store, cfg.out, cohort=cfg.cohort, extra=extra)
