"""``mmray signatures``: one gated, registered survival model per GMT gene signature.

For every set of the cohort's GMT (plus ``ALL_GENES``, every gene of the
expression matrix) the job keeps the genes the matrix has, skips sets with
fewer than ``min_genes`` of them (reason logged), and cross-validates a
penalised Cox model (:mod:`mmray.train.signatures`) on the shared saved
folds, one Ray task per signature (``task_num_cpus`` CPUs each). The driver
logs each result to MLflow as it arrives, gates it and registers it as
``<model_prefix><signature>`` (see :mod:`mmray.registry.lineage`), so an
interrupted job keeps everything finished so far.

Resume: a signature whose FINISHED run has the same config hash, data key
(feature and folds versions) and gene list is not retrained; its earlier
outcome is reported as ``resumed``. ``force=true`` (``--force``) retrains all.
"""

from __future__ import annotations

import difflib
import logging
import time
from dataclasses import dataclass, field

import numpy as np

import mmray
from mmray.config import config_hash
from mmray.errors import ConfigError, MmrayError
from mmray.features.gmt import GeneSet, read_gmt
from mmray.progress import RateLog
from mmray.registry.config import RegistryConfig
from mmray.registry.lineage import TAG, Lineage, data_key, model_name
from mmray.registry.pyfunc import SurvivalPyfunc
from mmray.registry.registry import Candidate, Outcome, Registry
from mmray.store import FeatureStore
from mmray.store.manifest import git_revision
from mmray.train.signature_data import SignatureData, load_signature_data
from mmray.train.signatures import CoxModelConfig, SignatureFit, cross_validate

log = logging.getLogger(__name__)
ALL_GENES = "ALL_GENES"
STAGE = "signatures"


@dataclass(frozen=True)
class SignaturesConfig:
    cohort: str
    store: str
    gmt: str | None = None  # default: the cohort's `signatures` file
    only: tuple[str, ...] = ()  # signature names (ALL_GENES included); empty: all
    force: bool = False
    all_genes: bool = True  # also train on every gene of the matrix
    n_folds: int = 5
    seed: int = 0
    repeats: int = 1  # repeated CV: the same saved folds as `mmray train` with folds.repeats (same seed)
    min_genes: int = 3
    n_boot: int = 200  # bootstrap resamples of the out-of-fold C-index (0: off)
    model_prefix: str = "sig__"
    labels_group: str = "labels"
    expression_group: str = "expression"
    task_num_cpus: float = 1.0
    model: CoxModelConfig = field(default_factory=CoxModelConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)

    def validate(self):
        if self.n_folds < 2:
            yield ("n_folds", f"must be >= 2, got {self.n_folds}")
        if self.repeats < 1:
            yield ("repeats", f"must be >= 1, got {self.repeats}")
        if self.min_genes < 1:
            yield ("min_genes", f"must be >= 1, got {self.min_genes}")
        if self.n_boot < 0:
            yield ("n_boot", f"must be >= 0, got {self.n_boot}")
        if self.task_num_cpus <= 0:
            yield ("task_num_cpus", f"must be > 0, got {self.task_num_cpus}")


def training_hash(cfg: SignaturesConfig) -> str:
    """Hash of everything that changes a model or its gate outcome (not paths, not only/force)."""
    return config_hash({"n_folds": cfg.n_folds, "seed": cfg.seed, "min_genes": cfg.min_genes,
                        "n_boot": cfg.n_boot, "model": cfg.model, "gate": cfg.registry.gate,
                        "model_prefix": cfg.model_prefix, "labels_group": cfg.labels_group,
                        "expression_group": cfg.expression_group,
                        **({"repeats": cfg.repeats} if cfg.repeats > 1 else {})})


@dataclass
class Row:
    signature: str
    genes_in_set: int
    genes_found: int
    outcome: Outcome


@dataclass
class SignaturesReport:
    rows: list[Row]
    problems: list[dict]  # unusable GMT lines
    seconds: float
    registry: str

    def counts(self) -> dict[str, int]:
        out = {"registered": 0, "gate_failed": 0, "skipped": 0, "error": 0, "resumed": 0}
        for r in self.rows:
            out[r.outcome.outcome] = out.get(r.outcome.outcome, 0) + 1
            out["resumed"] += int(r.outcome.resumed)
        return out

    @property
    def exit_code(self) -> int:
        return 3 if self.problems or self.counts()["error"] else 0

    def table(self) -> str:
        def c_index(o: Outcome) -> tuple[float, str]:
            m, sd = o.metrics.get("harrell_c_mean"), o.metrics.get("harrell_c_sd")
            if m is None or not np.isfinite(m):
                return -1.0, "-"
            return m, f"{m:.3f} ± {sd:.3f}" if sd is not None and np.isfinite(sd) else f"{m:.3f}"

        rows = sorted(self.rows, key=lambda r: (-c_index(r.outcome)[0], r.signature))
        width = max([len("signature")] + [len(r.signature) for r in rows])
        lines = [f"{'signature':<{width}}  {'in set':>6}  {'found':>5}  {'C-index (mean ± sd)':<19}  result"]
        for r in rows:
            lines.append(f"{r.signature:<{width}}  {r.genes_in_set:>6}  {r.genes_found:>5}  "
                         f"{c_index(r.outcome)[1]:<19}  {describe(r.outcome)}")
        n = self.counts()
        lines.append(f"{len(self.rows)} signatures: {n['registered']} registered, {n['gate_failed']} failed the "
                     f"gate, {n['skipped']} skipped, {n['error']} errors ({n['resumed']} resumed from earlier "
                     f"runs) in {self.seconds:.1f} s; registry {self.registry}")
        for p in self.problems:
            lines.append(f"GMT problem: {p['reason']}")
        return "\n".join(lines)


def describe(o: Outcome) -> str:
    pre = "resumed: " if o.resumed else ""
    if o.outcome == "registered":
        return f"{pre}registered {o.name} v{o.version}" + (" (champion)" if o.champion else " (not champion)")
    if o.outcome == "gate_failed":
        return f"{pre}not registered: {o.reason}"
    return f"{pre}{o.outcome}: {o.reason}"


def _fit_one(x, cols, time_days, event, fold, model_cfg, n_boot, seed) -> SignatureFit:
    return cross_validate(x[:, cols], time_days, event, fold, cfg=model_cfg, n_boot=n_boot, seed=seed)


_REMOTE = None


def _remote_fit():
    global _REMOTE
    if _REMOTE is None:
        import ray

        _REMOTE = ray.remote(_fit_one)
    return _REMOTE


def _select(sets: dict[str, GeneSet], data: SignatureData, cfg: SignaturesConfig) -> dict[str, tuple[str, ...]]:
    """Signature -> genes in the set, in GMT order (ALL_GENES last), filtered by ``only``."""
    chosen = {name: s.genes for name, s in sets.items()}
    if cfg.all_genes or ALL_GENES in cfg.only:
        chosen[ALL_GENES] = tuple(data.genes)
    if cfg.only:
        unknown = [n for n in cfg.only if n not in chosen]
        if unknown:
            problems = []
            for n in unknown:
                close = difflib.get_close_matches(n, list(chosen), n=3)
                problems.append(("only", f"no signature {n!r} in the GMT" + (f"; did you mean {close}?" if close
                                                                             else "")))
            raise ConfigError(problems)
        chosen = {n: g for n, g in chosen.items() if n in set(cfg.only)}
    return chosen


def run_signatures(cfg: SignaturesConfig) -> SignaturesReport:
    """Train, gate and register one model per signature (Ray must be reachable)."""
    import ray

    from mmray.cohort import load_cohort

    start = time.perf_counter()
    gmt_path = cfg.gmt
    if gmt_path is None:
        gmt_path = load_cohort(cfg.cohort, check_files=False).part_path("signatures")
        if gmt_path is None:
            raise ConfigError([("signatures", (f"{cfg.cohort} names no GMT; add `signatures: file.gmt` to it "
                                               f"or pass gmt=PATH"))])
    sets, problems = read_gmt(gmt_path)
    store = FeatureStore(cfg.store)
    if problems:
        store.record_failures(STAGE, problems)
    data = load_signature_data(store, labels_group=cfg.labels_group, expression_group=cfg.expression_group,
                               n_folds=cfg.n_folds, seed=cfg.seed, repeats=cfg.repeats)
    chosen = _select(sets, data, cfg)
    registry = Registry(cfg.registry, store=cfg.store)
    chash = training_hash(cfg)
    dkey = data_key(feature_versions=data.feature_versions, folds=data.folds_ref, folds_hash=data.folds_hash,
                    store=store.uri)
    earlier = {} if cfg.force else registry.finished_runs(config_hash=chash, data_key=dkey)
    registry.close_abandoned(f"tags.`{TAG}config_hash` = '{chash}' and tags.`{TAG}data_key` = '{dkey}'")
    have = set(data.genes)
    rows: list[Row] = []
    pending: dict = {}
    names: dict[str, str] = {}
    refs = None
    for sig, genes in chosen.items():
        found = tuple(g for g in genes if g in have)
        lin = Lineage(signature=sig, genes_in_set=tuple(genes), genes_found=found,
                      feature_versions=data.feature_versions, folds=data.folds_ref, folds_hash=data.folds_hash,
                      config_hash=chash, git_revision=git_revision(), store=store.uri,
                      mmray_version=mmray.__version__)
        name = model_name(sig, prefix=cfg.model_prefix)
        row = Row(sig, len(genes), len(found), outcome=None)  # type: ignore[arg-type]
        run = earlier.get(sig)
        if run is not None and run.data.tags.get("mmray.genes_hash") == lin.genes_hash:
            row.outcome = Registry.outcome_of_run(run)
            names.setdefault(name, sig)
            rows.append(row)
            continue
        if name in names:
            row.outcome = registry.record(Candidate(name, lin, "skipped", reason=(
                f"model name {name} is already used by signature {names[name]!r} (names are sanitised); "
                f"rename one of the sets")))
        elif len(found) < cfg.min_genes:
            row.outcome = registry.record(Candidate(name, lin, "skipped", params=_params(cfg, lin), reason=(
                f"only {len(found)} of {len(genes)} genes in the expression matrix (min_genes {cfg.min_genes})")))
        else:
            if refs is None:
                refs = [ray.put(a) for a in (data.x, data.time_days, data.event,
                                              data.fold if cfg.repeats == 1 else data.repeat_fold)]
            task = _remote_fit().options(num_cpus=cfg.task_num_cpus, max_retries=1, name=f"sig:{name}")
            ref = task.remote(refs[0], data.columns(found), *refs[1:], cfg.model, cfg.n_boot, cfg.seed)
            pending[ref] = (row, name, lin)
        names.setdefault(name, sig)
        rows.append(row)
    log.info("signatures: %d to train, %d resumed or skipped", len(pending), len(rows) - len(pending))
    progress = RateLog(log, "signatures", len(pending), unit="models")
    while pending:  # log each result as it lands, so an interrupted job keeps what finished
        ready, _ = ray.wait(list(pending), num_returns=1)
        more, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
        for ref in dict.fromkeys([*ready, *more]):
            row, name, lin = pending.pop(ref)
            row.outcome = registry.record(_candidate(ref, name=name, lineage=lin, cfg=cfg,
                                                     x=data.x[:, data.columns(lin.genes_found)]))
            log.debug("signatures: %s -> %s (%d left)", name, row.outcome.outcome, len(pending))
            progress.tick(failed=row.outcome.outcome == "error")
    return SignaturesReport(rows=rows, problems=problems, seconds=time.perf_counter() - start,
                            registry=registry.tracking_uri)


def _params(cfg: SignaturesConfig, lin: Lineage) -> dict:
    return {"signature": lin.signature, "n_genes_in_set": len(lin.genes_in_set),
            "n_genes_found": len(lin.genes_found), "model.kind": cfg.model.kind,
            "model.l1_ratio": cfg.model.l1_ratio, "model.alpha_min_ratio": cfg.model.alpha_min_ratio,
            "model.n_alphas": cfg.model.n_alphas, "model.ridge_alpha": cfg.model.ridge_alpha,
            "n_folds": cfg.n_folds, "seed": cfg.seed, "n_boot": cfg.n_boot, "min_genes": cfg.min_genes,
            "gate.metric": cfg.registry.gate.metric, "gate.threshold": cfg.registry.gate.threshold,
            "gate.require_ci_low": cfg.registry.gate.require_ci_low}


def _candidate(ref, *, name: str, lineage: Lineage, cfg: SignaturesConfig, x: np.ndarray) -> Candidate:
    import ray

    params = _params(cfg, lineage)
    try:
        fit: SignatureFit = ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else e
        reason = str(cause) if isinstance(cause, MmrayError) else f"{type(cause).__name__}: {cause}"
        return Candidate(name, lineage, "error", params=params, reason=reason.splitlines()[0][:2000])
    params.update({"n_patients": fit.n_patients, "n_events": fit.n_events,
                   "survival_times_days": ",".join(f"{t:g}" for t in fit.times_days)})
    metrics = {**fit.metrics, "fit_seconds": fit.seconds}
    model = SurvivalPyfunc(fit.estimator, features=list(lineage.genes_found), times_days=fit.times_days,
                           info={"signature": lineage.signature, "model_name": name}, reference_x=x)
    if fit.notes:
        params["notes"] = "; ".join(fit.notes)[:5000]
    return Candidate(name, lineage, "fitted", metrics=metrics, params=params, model=model)
