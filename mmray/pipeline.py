"""``mmray pipeline``: every stage in order from one YAML, each skipping what the store already holds.

Stages (``stages`` picks an ordered subset)::

    synth       synthetic cohort          skipped when <synth.out>/truth.json has the same generator settings
    ingest      cohort -> feature groups  ingest's own resume; "skipped" when it wrote nothing new
    pretrain    DINO slide encoder        mmray.pipeline_pretrain: train, embed with it, compare with random
    train       cross-validation          skipped when <store>/_results/<run> holds a finished run whose key
    tune        Ray Tune + refit            (config hash + the store's feature-group versions) matches
    register    tuned model -> MLflow     skipped when this tune run was registered with the same settings
    signatures  per-signature models      its own resume (finished runs with the same config and data)
    serve       Ray Serve + HTTP queries  never skipped
    report      report.html               always rewritten

Each section of the YAML is the config of that stage's own command (``train``
is ``mmray train``'s config without ``store``, ...); the pipeline fills in
``store`` and ``cohort``. A run key names the train and tune runs
(``train-<key>``, ``tune-<model>-<key>``) and is written next to their
results (``pipeline.json``) only when the run finished without failures, so
a crashed or partial run is redone on the next invocation.

The pipeline stops at the first stage that fails (exit 1); a stage that
finished with failed inputs (exit 3) lets the rest go on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import mmray
from mmray import pipeline_pretrain, uri as uri_mod
from mmray.config import build, config_hash, to_dict
from mmray.errors import ConfigError, MmrayError
from mmray.registry.config import GateConfig, RegistryConfig, resolve_tracking
from mmray.synth.job import SynthJobConfig

log = logging.getLogger("mmray.pipeline")
STAGES = ("synth", "ingest", "pretrain", "train", "tune", "register", "signatures", "serve", "report")
StageName = Literal["synth", "ingest", "pretrain", "train", "tune", "register", "signatures", "serve", "report"]
EXIT_OK, EXIT_FAILED, EXIT_PARTIAL = 0, 1, 3
MARKER = "pipeline.json"  # written into a train/tune run folder once the run finished cleanly


@dataclass(frozen=True)
class RegisterSection:
    """The tuned model's registration: ``gate`` replaces ``registry.gate``."""

    gate: GateConfig = field(default_factory=GateConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)  # experiment: mmray-models (register_tuned)
    name_prefix: str = "mmray__"


@dataclass(frozen=True)
class ServeExtras:
    """The serve section's keys that are the pipeline's, not ``mmray serve``'s."""

    queries: int = 8  # real HTTP predict requests sent to the served models
    keep_running: bool = False  # leave the application up (on a cluster it outlives the job)

    def validate(self):
        if self.queries < 0:
            yield ("queries", f"must be >= 0, got {self.queries}")


@dataclass(frozen=True)
class ReportSection:
    out: str | None = None  # default <store>/_reports/report.html


def _section_problems(name: str, make: Callable[[], Any]) -> list[tuple[str, str]]:
    try:
        make()
    except ConfigError as e:
        return [(f"{name}.{p}" if p else name, msg) for p, msg in e.problems]
    return []


@dataclass(frozen=True)
class PipelineConfig:
    store: str
    cohort: str | None = None  # default with synth: <synth.out>/cohort.yaml
    stages: tuple[StageName, ...] = STAGES
    synth: SynthJobConfig = field(default_factory=lambda: SynthJobConfig(out="synth_cohort"))
    ingest: dict[str, Any] = field(default_factory=dict)  # IngestConfig without cohort/store
    pretrain: dict[str, Any] = field(default_factory=dict)  # PretrainConfig without cohort/store, plus compare
    train: dict[str, Any] = field(default_factory=dict)  # TrainJobConfig without store
    tune: dict[str, Any] = field(default_factory=dict)  # TuneJobConfig without store
    register: RegisterSection = field(default_factory=RegisterSection)
    signatures: dict[str, Any] = field(default_factory=dict)  # SignaturesConfig without cohort/store
    serve: dict[str, Any] = field(default_factory=dict)  # ServeConfig without store, plus ServeExtras
    report: ReportSection = field(default_factory=ReportSection)

    def validate(self):
        order = [s for s in STAGES if s in self.stages]
        if list(self.stages) != order:
            yield ("stages", f"list each stage once, in the order {', '.join(STAGES)}; got {list(self.stages)}")
        if self.cohort is None and "synth" not in self.stages and {"ingest", "signatures"} & set(self.stages):
            yield ("cohort", "give cohort=PATH/cohort.yaml (or run the synth stage, whose output it then is)")
        for name, keys in (("ingest", ("cohort", "store")), ("train", ("store",)), ("tune", ("store",)),
                           ("signatures", ("cohort", "store")), ("serve", ("store",))):
            for key in keys:
                if key in getattr(self, name):
                    yield (f"{name}.{key}", f"set {key} at the top level; the pipeline fills it into every stage")
        yield from _section_problems("ingest", self.ingest_config)
        if self.ingest:
            from mmray.ingest.run import section_problems

            yield from [(f"ingest.{p}", m) for p, m in section_problems(self.ingest_config())]
        yield from pipeline_pretrain.section_problems(self)
        yield from _section_problems("train", self.train_config)
        yield from _section_problems("tune", self.tune_config)
        yield from _section_problems("signatures", self.signatures_config)
        yield from _section_problems("serve", self.serve_config)
        yield from _section_problems("serve", self.serve_extras)
        if "serve" in self.stages:
            yield from self._serve_bind_problems()
        if not self.register.name_prefix:
            yield ("register.name_prefix", "give a prefix for the tuned model's registered name, e.g. mmray__")
        yield from self._same_registry()

    def _serve_bind_problems(self):
        """A reachable serve.host with no token: refused now, not after hours of training."""
        from mmray.serve.config import bind_problems

        with contextlib.suppress(ConfigError):  # an invalid serve section is reported above
            yield from [(f"serve.{key}", msg) for key, msg in bind_problems(self.serve_config())]

    def _same_registry(self):
        """Serve must look where register and signatures put their models."""
        try:
            serve = self.serve_config().registry
            places = {"register.registry": self.register.registry,
                      "signatures.registry": self.signatures_config().registry}
        except ConfigError:
            return  # reported above
        want = (resolve_tracking(serve, store=self.store)[0], serve.alias)
        for name, reg in places.items():
            got = (resolve_tracking(reg, store=self.store)[0], reg.alias)
            if got != want:
                yield (name, (f"registers into {got[0]} with alias {got[1]!r} but serve.registry reads "
                              f"{want[0]} with alias {want[1]!r}; give both the same tracking_uri/workdir and alias"))

    # ---- each stage's own config, with store and cohort filled in
    def cohort_uri(self) -> str | None:
        if self.cohort is not None:
            return self.cohort
        return uri_mod.join(self.synth.out, "cohort.yaml") if "synth" in self.stages else None

    def ingest_config(self):
        from mmray.ingest.run import IngestConfig

        ingest = pipeline_pretrain.ingest_section(self)  # a finished pretrain stage's encoder, once it exists
        return build(IngestConfig, {**ingest, "cohort": self.cohort_uri() or "", "store": self.store})

    def train_config(self):
        from mmray.train.config import TrainJobConfig

        return build(TrainJobConfig, {**self.train, "store": self.store})

    def tune_config(self):
        from mmray.tune.config import TuneJobConfig

        return build(TuneJobConfig, {**self.tune, "store": self.store})

    def signatures_config(self):
        from mmray.registry.signatures import SignaturesConfig

        return build(SignaturesConfig, {**self.signatures, "cohort": self.cohort_uri() or "", "store": self.store})

    def serve_config(self):
        from mmray.serve.config import ServeConfig

        own = {k: v for k, v in self.serve.items() if k not in _EXTRA_KEYS}
        return build(ServeConfig, {**own, "store": self.store})

    def serve_extras(self) -> ServeExtras:
        return build(ServeExtras, {k: v for k, v in self.serve.items() if k in _EXTRA_KEYS})

    def register_registry(self) -> RegistryConfig:
        return dataclasses.replace(self.register.registry, gate=self.register.gate)


_EXTRA_KEYS = {f.name for f in dataclasses.fields(ServeExtras)}


@dataclass
class StageResult:
    name: str
    status: Literal["ran", "skipped", "failed"]
    seconds: float
    detail: str
    data: dict = field(default_factory=dict)
    exit_code: int = EXIT_OK  # 3: the stage finished but some inputs or fits failed


@dataclass
class PipelineReport:
    stages: list[StageResult]
    not_run: list[str] = field(default_factory=list)  # stages after a failed one

    @property
    def exit_code(self) -> int:
        if any(s.status == "failed" for s in self.stages):
            return EXIT_FAILED
        return EXIT_PARTIAL if any(s.exit_code == EXIT_PARTIAL for s in self.stages) else EXIT_OK

    def stage(self, name: str) -> StageResult | None:
        return next((s for s in self.stages if s.name == name), None)

    def text(self) -> str:
        lines = [f"{'stage':<11} {'status':<8} {'seconds':>8}  detail"]
        for s in self.stages:
            mark = " (partial)" if s.exit_code == EXIT_PARTIAL else ""
            lines.append(f"{s.name:<11} {s.status:<8} {s.seconds:>8.1f}  {s.detail}{mark}")
        lines += [f"{name:<11} {'not run':<8} {'':>8}  an earlier stage failed" for name in self.not_run]
        total = sum(s.seconds for s in self.stages)
        lines.append(f"pipeline: {len(self.stages)} stage(s) in {total:.1f} s, exit {self.exit_code}")
        return "\n".join(lines)


class _Run:
    """What the stages share: the config, the store, and the results so far."""

    def __init__(self, cfg: PipelineConfig, progress: Callable[[str], None]):
        from mmray.ingest.pseudonym import PathRedactor, pseudonymiser_from_env
        from mmray.store import FeatureStore

        self.cfg = cfg
        cohort = cfg.cohort_uri()
        # With a pseudonym key, where the inputs live never reaches a line, a detail or the report.
        self.redact = PathRedactor(pseudonymiser_from_env(), [cohort and uri_mod.parent(cohort), cfg.synth.out])
        self.progress = lambda line: progress(self.redact(line))
        self.store = FeatureStore(cfg.store)
        self.results: list[StageResult] = []


def run_pipeline(cfg: PipelineConfig, *, progress: Callable[[str], None] = print) -> PipelineReport:
    """Run ``cfg.stages`` in order (module doc); Ray must be initialised for all but synth and ingest tables."""
    run = _Run(cfg, progress)
    with run.redact.logs():
        return _run_stages(run, list(cfg.stages))


def _run_stages(run: _Run, stages: list[str]) -> PipelineReport:
    progress = run.progress
    for i, name in enumerate(stages):
        progress(f"==> {name}")
        start = time.perf_counter()
        try:
            status, detail, data, code = _STAGES[name](run)
        except MmrayError as e:  # a config, input or store problem: its message says what to fix
            status, detail, data, code = "failed", f"{type(e).__name__}: {e}", {}, EXIT_FAILED
        except Exception as e:  # a bug or a cluster problem: the traceback goes to the log
            log.exception("stage %s failed", name)
            status, detail, data, code = "failed", f"{type(e).__name__}: {e}", {}, EXIT_FAILED
        result = StageResult(name, status, time.perf_counter() - start, run.redact(detail), data, code)
        run.results.append(result)
        progress(f"    {status}: {detail} ({result.seconds:.1f} s)")
        if status == "failed":
            return PipelineReport(run.results, not_run=stages[i + 1:])
    return PipelineReport(run.results)


# --------------------------------------------------------------------------- skipping


def _read_json(uri: str) -> dict | None:
    try:
        return json.loads(uri_mod.read_bytes(uri))
    except (FileNotFoundError, OSError, ValueError):
        return None


def _write_json(uri: str, obj: dict) -> None:
    uri_mod.write_bytes(uri, (json.dumps(obj, indent=1, default=str) + "\n").encode())


def input_versions(store) -> dict[str, str]:
    """The store's latest version of every group a run may read; not the folds, which the runs make
    themselves from the labels (and which would change the key of the run that made them)."""
    from mmray.train.folds import FOLDS_GROUP

    return {g: store.latest(g) for g in store.groups() if g != FOLDS_GROUP}


def run_key(cfg, store) -> str:
    """Hash of a train/tune config (without its run name and paths) and the store's input versions."""
    plain = dataclasses.replace(cfg, run_name=None, output=None, workdir=None)
    return config_hash({"config": plain, "inputs": input_versions(store)})


def _resolved_run(run: _Run, cfg, prefix: str):
    """``(config with run_name and output set, key, marker uri)``."""
    from mmray.train.results import default_output

    key = run_key(cfg, run.store)
    name = cfg.run_name or f"{prefix}-{key}"
    cfg = dataclasses.replace(cfg, run_name=name, output=cfg.output or default_output(run.store.uri, name))
    return cfg, key, uri_mod.join(cfg.output, MARKER)


def _finished(marker: str, key: str) -> bool:
    return (_read_json(marker) or {}).get("key") == key


def _mark(marker: str, *, stage: str, key: str, cfg, store) -> None:
    _write_json(marker, {"stage": stage, "key": key, "run": cfg.run_name, "inputs": input_versions(store),
                         "finished_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                         "mmray_version": mmray.__version__})


# --------------------------------------------------------------------------- stages


def _synth(run: _Run):
    from mmray.synth.job import run_synth_job
    from mmray.synth.profiles import get_profile

    cfg = run.cfg.synth
    prof = get_profile(cfg.profile)
    want = {"profile": cfg.profile, "seed": cfg.seed, "corrupt": cfg.corrupt, "mmray_version": mmray.__version__,
            "patients": cfg.patients or prof.default_patients,
            "slide_px": list(cfg.slide_px or (prof.slide_width_px, prof.slide_height_px))}
    truth = _read_json(str(Path(cfg.out) / "truth.json")) or {}
    gen = truth.get("generator", {})
    data = {"out": cfg.out, **want}
    if all(gen.get(k) == v for k, v in want.items()):
        return "skipped", f"cohort in {cfg.out} already written with these settings", data, EXIT_OK
    result = run_synth_job(cfg)
    data.update(slides=result.n_slides, ct_studies=result.n_ct_studies, corrupt_inputs=result.n_corrupt)
    return "ran", result.summary(), data, EXIT_OK


def _ingest(run: _Run):
    from mmray.ingest.run import run_ingest

    reports = run_ingest(run.cfg.ingest_config(), progress=run.progress)
    groups = {g: v for r in reports for g, v in r.groups.items()}
    failed = sum(len(r.failures) for r in reports)
    done = sum(r.n_done for r in reports)
    data = {"groups": groups, "failed": failed, "done": done, "skipped": sum(r.n_skipped for r in reports),
            "modalities": [r.modality for r in reports]}
    fails = f"; {failed} input(s) failed (failures table)" if failed else ""
    code = EXIT_PARTIAL if failed else EXIT_OK
    if not groups and not done:
        return "skipped", f"up to date: {data['skipped']} input(s) already in the store{fails}", data, code
    written = ", ".join(f"{g}@{v}" for g, v in groups.items()) or "no new versions"
    return "ran", f"{done} input(s) ingested -> {written}{fails}", data, code


def _keyed_run(run: _Run, stage: str, cfg, prefix: str, execute):
    """Run a train/tune job unless its run folder holds a finished run with the same key.

    Returns ``(config with run_name and output, data, job report or None when skipped)``.
    """
    cfg, key, marker = _resolved_run(run, cfg, prefix)
    data = {"run": cfg.run_name, "output": cfg.output, "key": key}
    if _finished(marker, key):
        return cfg, data, None
    report = execute(cfg)
    run.progress(report.text())
    if report.exit_code == EXIT_OK:
        _mark(marker, stage=stage, key=key, cfg=cfg, store=run.store)
    return cfg, data, report


def _train(run: _Run):
    from mmray.train.cv import run_train

    cfg, data, report = _keyed_run(run, "train", run.cfg.train_config(), "train", run_train)
    if report is None:
        return "skipped", f"run {cfg.run_name} already in the store with this config and data", data, EXIT_OK
    data.update(fits=len(report.results), failed=report.n_failed, mlflow_run_id=report.mlflow_run_id)
    return "ran", f"run {cfg.run_name}: {_best(report.summary)}; {report.n_failed} failed fit(s)", data, \
        report.exit_code


def _best(summary) -> str:
    """The best headline metric of a train summary, as one phrase."""
    if summary is None or not len(summary):
        return "no results"
    head = summary["headline"].iloc[0]
    col = f"{head}_mean"
    if col not in summary or summary[col].isna().all():
        return f"{len(summary)} model x modality set(s), no {head}"
    best = summary.loc[summary[col].idxmax()]
    return f"{len(summary)} model x modality set(s), best {head} {best[col]:.3f} ({best['model']} on " \
           f"{best['modality_set']})"


def _tune(run: _Run):
    from mmray.tune.tuner import run_tune

    cfg = run.cfg.tune_config()
    cfg, data, report = _keyed_run(run, "tune", cfg, f"tune-{cfg.model}", run_tune)
    data["model"] = cfg.model
    if report is None:
        return "skipped", f"run {cfg.run_name} already in the store with this config and data", data, EXIT_OK
    if report.exit_code == EXIT_FAILED:
        raise MmrayError(f"tune {cfg.run_name}: no trial finished; see {cfg.output}")
    data.update(trials=len(report.trials), best_score=report.best_score, best_config=report.best_config,
                best_model=report.best_model)
    return "ran", (f"run {cfg.run_name}: {len(report.trials)} trial(s), best cv_score {report.best_score:.3f}"
                   f"{'; refitted' if report.best_model else ''}"), data, report.exit_code


def _register(run: _Run):
    from mmray.registry.lineage import model_name
    from mmray.registry.trained import exit_code, outcome_text, register_tuned

    tune = run.cfg.tune_config()
    cfg, key, marker = _resolved_run(run, tune, f"tune-{tune.model}")
    if not _finished(marker, key):
        raise MmrayError(f"no finished tune run for this tune config in {cfg.output}; run the tune stage first "
                         f"(stages: [..., tune, register, ...])")
    name = model_name(cfg.model, prefix=run.cfg.register.name_prefix)
    # register_tuned resumes: the same best model, name and gate already recorded -> the earlier outcome
    outcome = register_tuned(cfg.output, store=run.store.uri, registry=run.cfg.register_registry(), name=name)
    data = {"tune_run": cfg.run_name, **to_dict(dataclasses.asdict(outcome))}
    code = exit_code(outcome)  # registered or gate_failed: 0; refused (not servable): 3
    if code == EXIT_FAILED:
        raise MmrayError(outcome_text(outcome))
    return ("skipped" if outcome.resumed else "ran"), outcome_text(outcome), data, code


def _signatures(run: _Run):
    from mmray.registry.signatures import run_signatures

    report = run_signatures(run.cfg.signatures_config())
    run.progress(report.table())
    n = report.counts()
    data = {**n, "signatures": len(report.rows), "registry": report.registry}
    detail = (f"{len(report.rows)} signature(s): {n['registered']} registered, {n['gate_failed']} failed the gate, "
              f"{n['skipped']} skipped, {n['error']} errors")
    if report.rows and n["resumed"] == len(report.rows):
        return "skipped", f"{detail} (all resumed from earlier runs)", data, report.exit_code
    return "ran", f"{detail} ({n['resumed']} resumed)", data, report.exit_code


def _serve(run: _Run):
    from ray import serve

    from mmray.serve.app import start_serve
    from mmray.serve.client import MmrayClient
    from mmray.serve.config import token_digest
    from mmray.serve.queries import StoreRows, send_queries

    cfg, extras = run.cfg.serve_config(), run.cfg.serve_extras()
    url = start_serve(cfg)
    try:
        token = (cfg.token or os.environ.get(cfg.token_env, "")).strip() if token_digest(cfg) else None
        labels = run.cfg.train_config().labels_group
        expression = run.cfg.signatures_config().expression_group
        with MmrayClient(url, token=token, timeout_s=120) as client:
            data = send_queries(client, StoreRows(run.store, labels_group=labels, expression_group=expression),
                                n_queries=extras.queries)
    finally:
        if not extras.keep_running:
            serve.shutdown()
    data = {"url": url, **data, "kept_running": extras.keep_running}
    ok = [q["latency_ms"] for q in data["queries"] if q["status"] == 200]
    lat = f", median latency {sorted(ok)[len(ok) // 2]:.0f} ms" if ok else ""
    detail = (f"{len(data['models'])} model(s) at {url}; {len(ok)}/{len(data['queries'])} queries answered"
              f"{lat}{'; still running' if extras.keep_running else ''}")
    if not data["models"]:
        detail += "; no registered model holds the alias"
    failed = [q for q in data["queries"] if q["status"] != 200]
    if failed:
        detail += f"; {failed[0]['model']}: {failed[0].get('error', '')[:300]}"
    partial = data["errors"] or not data["models"]
    return "ran", detail, data, EXIT_PARTIAL if partial else EXIT_OK


def _report(run: _Run):
    from mmray.report.build import write_report  # the report module renders every section
    from mmray.serve.auth import redact

    data = {r.name: r.data for r in run.results}
    extra = {"timings": [(r.name, r.seconds, r.status, r.detail) for r in run.results],
             "serve": data.get("serve"), "pipeline_config": redact(to_dict(run.cfg))}  # no serve.token
    if "train" in data:
        extra["train_run"] = data["train"]["run"]  # not the tune refit's run, which is newer
    # out null: <store>/_reports/report.html (for an s3:// store, ./report.html plus a copy in the store)
    path = write_report(run.store, run.cfg.report.out, cohort=run.cfg.cohort_uri(), extra=run.redact(extra))
    return "ran", f"report written to {path}", {"path": str(path)}, EXIT_OK


_STAGES: dict[str, Callable[[_Run], tuple]] = {
    "synth": _synth, "ingest": _ingest, "pretrain": pipeline_pretrain.run_stage, "train": _train, "tune": _tune,
    "register": _register, "signatures": _signatures, "serve": _serve, "report": _report}
