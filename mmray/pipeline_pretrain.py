"""The pipeline's ``pretrain`` stage (between ``ingest`` and ``train``): a slide encoder trained on the cohort.

The ``pretrain:`` section of a pipeline YAML is ``mmray pretrain``'s config
without ``cohort``/``store`` (its ``wsi`` defaults to the ingest's, so the
encoder learns from the tiles it will embed), plus ``compare``.  The stage:

1. trains the encoder (:func:`mmray.train.pretrain.job.run_pretrain`; skipped when its output holds a finished
   run with the same key);
2. with ``compare.enabled``, cross-validates the slide-only models of the train section (its folds, seed and
   models on the ``slide`` set) on the slide features the ingest wrote with the *random* encoder;
3. embeds the slides with the pretrained encoder (new ``wsi_tiles`` / ``wsi_slide`` / ``wsi_patient``
   versions; with ``region.enabled`` also ``wsi_regions_hipt``), which every later stage uses;
4. cross-validates the same models on the same folds again, now on the pretrained features, and writes
   ``<encoder output>/compare.json`` (per fold and mean Harrell C of both, the paired difference), which the
   report shows.

On a rerun, ingest already embeds with the pretrained encoder (:func:`ingest_section` reads the stage's
``current.json``), so nothing is embedded twice, and the stage skips what its outputs record.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass

import numpy as np

from mmray import uri as uri_mod
from mmray.config import build, config_hash

log = logging.getLogger("mmray.pipeline")
POINTER = "current.json"
COMPARE = "compare.json"
SLIDES_PATIENT = "wsi_patient"


@dataclass(frozen=True)
class CompareSection:
    """Slide-only C of the random vs the pretrained encoder, on the train section's folds and models."""

    enabled: bool = True
    set_name: str = "slide"  # the train section's modality set to compare on
    models: tuple[str, ...] = ()  # default: the train section's models that run on that set


def _own(section: dict) -> tuple[dict, CompareSection]:
    rest = {k: v for k, v in section.items() if k != "compare"}
    return rest, build(CompareSection, section.get("compare") or {})


def pretrain_config(cfg):
    """The stage's :class:`~mmray.train.pretrain.config.PretrainConfig` (cohort, store and wsi filled in)."""
    from mmray.train.pretrain.config import PretrainConfig

    own, _ = _own(cfg.pretrain)
    data = {"wsi": (cfg.ingest or {}).get("wsi", {}), "embed": True, **own,
            "cohort": cfg.cohort_uri() or "", "store": cfg.store}
    return build(PretrainConfig, data)


def section_problems(cfg) -> list[tuple[str, str]]:
    from mmray.errors import ConfigError

    if "pretrain" not in cfg.stages:
        return []
    try:
        pretrain_config(cfg)
        _own(cfg.pretrain)
    except ConfigError as e:
        return [(f"pretrain.{p}" if p else "pretrain", m) for p, m in e.problems]
    return []


def _pointer_uri(store: str, name: str) -> str:
    return uri_mod.join(store, "_encoders", name, POINTER)


def _section_hash(cfg) -> str:
    own, _ = _own(cfg.pretrain)
    wsi = {k: v for k, v in (cfg.ingest or {}).get("wsi", {}).items() if k != "encoder"}
    return config_hash({"pretrain": own, "wsi": wsi})[:16]


def ingest_section(cfg) -> dict:
    """The ingest section, with ``wsi.encoder`` pointing at the stage's pretrained encoder once one exists for
    these settings (so a rerun's ingest keeps the pretrained embeddings instead of redoing the random ones)."""
    section = dict(cfg.ingest or {})
    if "pretrain" not in cfg.stages:
        return section
    name = (cfg.pretrain or {}).get("name", "dino_tiles")
    try:
        ptr = json.loads(uri_mod.read_bytes(_pointer_uri(cfg.store, name)))
    except (FileNotFoundError, OSError, ValueError):
        return section
    if ptr.get("section_hash") != _section_hash(cfg):
        return section
    wsi = dict(section.get("wsi") or {})
    wsi["encoder"] = {**(wsi.get("encoder") or {}), **ptr["encoder"]}
    return {**section, "wsi": wsi}


def compared_models(tcfg, compare: CompareSection) -> tuple:
    """The train section's model entries that run on the compared set (or ``compare.models``), on that set only."""
    from mmray.train.config import ModelEntry, sets_for

    models = [e for e in tcfg.models if compare.set_name in sets_for(e, tcfg.modality_sets)]
    if compare.models:
        models = [e for e in models if e.name in compare.models] or [ModelEntry(m, (compare.set_name,))
                                                                     for m in compare.models]
    return tuple(dataclasses.replace(e, sets=(compare.set_name,)) for e in models)


def _slide_runs(run, compare: CompareSection, tag: str):
    """Cross-validate the compared models on the slide set now (a train run named after ``tag``)."""
    from mmray.train.cv import run_train

    tcfg = run.cfg.train_config()
    sets = {compare.set_name: tcfg.modality_sets.get(compare.set_name, ("slide",))}
    cfg = dataclasses.replace(tcfg, modality_sets=sets, models=compared_models(tcfg, compare),
                              run_name=f"encoder-compare-{tag}", output=None, workdir=None,
                              n_boot=min(tcfg.n_boot, 50))
    return run_train(cfg)


def _fold_scores(report) -> dict:
    res = report.results[report.results["status"] == "ok"]
    head = "auc" if "harrell_c" not in res else "harrell_c"
    out = {}
    for model, g in res.groupby("model"):
        g = g.sort_values(["repeat", "fold"])
        out[model] = {"metric": head, "folds": [float(v) for v in g[head]], "mean": float(g[head].mean())}
    return out


def run_stage(run):
    """The stage (module doc): ``(status, detail, data, exit code)``."""
    from mmray.train.pretrain.job import run_pretrain, slide_features_encoder

    cfg = pretrain_config(run.cfg)
    _, compare = _own(run.cfg.pretrain)
    store = run.store
    before = store.latest(SLIDES_PATIENT)
    random_scores = None
    compare_on = compare.enabled and "train" in run.cfg.stages and bool(compared_models(run.cfg.train_config(),
                                                                                          compare))
    if compare_on and before is not None:
        enc = slide_features_encoder(store)
        if "@random-seed" in enc:  # the ingest's random encoder: the baseline, measured before it is replaced
            run.progress("    pretrain: slide-only cross-validation with the random encoder (baseline)")
            random_scores = {"version": before, "encoder_id": enc,
                             "scores": _fold_scores(_slide_runs(run, compare, "random"))}
    report = run_pretrain(cfg)
    run.progress(report.text())
    compare_uri = uri_mod.join(report.output, COMPARE)
    result = _read(compare_uri)
    after = store.latest(SLIDES_PATIENT)
    if compare_on and random_scores is not None and after != before:
        run.progress("    pretrain: slide-only cross-validation with the pretrained encoder")
        pre = {"version": after, "encoder_id": report.encoder_id,
               "scores": _fold_scores(_slide_runs(run, compare, "pretrained"))}
        result = _comparison(random_scores, pre, key=report.key)
        uri_mod.write_bytes(compare_uri, (json.dumps(result, indent=1) + "\n").encode())
    ptr = {"section_hash": _section_hash(run.cfg), "output": report.output, "key": report.key,
           "encoder_id": report.encoder_id, "encoder": {"name": report.backbone, "weights": report.encoder_uri,
                                                        "input_px": report.input_px}}
    uri_mod.write_bytes(_pointer_uri(store.uri, cfg.name), (json.dumps(ptr, indent=1) + "\n").encode())
    data = {"output": report.output, "encoder_id": report.encoder_id, "groups": report.groups,
            "probe_first": report.probe(0), "probe_last": report.probe(-1), "mlflow": report.mlflow,
            "compare": result, "resumed": report.resumed}
    detail = f"{report.backbone} encoder {report.encoder_id[:40]}..."
    if result:
        d = result["difference"]
        detail += (f"; slide-only {d['metric']} random {d['random']:.3f} -> pretrained {d['pretrained']:.3f} "
                   f"({d['model']})")
    status = "skipped" if report.resumed and not report.groups and random_scores is None else "ran"
    return status, detail, data, report.exit_code


def _comparison(random: dict, pretrained: dict, *, key: str) -> dict:
    models = sorted(set(random["scores"]) & set(pretrained["scores"]))
    rows = []
    for m in models:
        a, b = random["scores"][m], pretrained["scores"][m]
        diffs = [y - x for x, y in zip(a["folds"], b["folds"])]
        rows.append({"model": m, "metric": a["metric"], "random": a["mean"], "pretrained": b["mean"],
                     "difference": float(np.mean(diffs)) if diffs else float("nan"), "random_folds": a["folds"],
                     "pretrained_folds": b["folds"], "folds_better": int(sum(d > 0 for d in diffs))})
    best = max(rows, key=lambda r: r["pretrained"]) if rows else {"model": "", "metric": "", "random": float("nan"),
                                                                  "pretrained": float("nan"), "difference": 0.0}
    return {"key": key, "random": {k: random[k] for k in ("version", "encoder_id")},
            "pretrained": {k: pretrained[k] for k in ("version", "encoder_id")}, "models": rows,
            "difference": {k: best[k] for k in ("model", "metric", "random", "pretrained", "difference")}}


def _read(uri: str) -> dict | None:
    try:
        return json.loads(uri_mod.read_bytes(uri))
    except (FileNotFoundError, OSError, ValueError):
        return None

