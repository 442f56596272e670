"""``mmray pretrain``: DINO on the cohort's own tissue tiles -> a registered encoder the slide stage loads.

:func:`run_pretrain`:

1. the cohort's slides (manifest ``wsi`` rows, pseudonymised ids as the WSI ingest names them) are planned
   by the WSI tile plan (:mod:`~mmray.train.pretrain.tiles_data`); failed slides go to the store's failures
   table (stage ``pretrain``) and the rest go on;
2. probe slides are held out (labels from the store's ``probe.labels_group``, when it has them);
3. DINO trains on Ray Train (:func:`~mmray.train.pretrain.loop.fit_dino`) over tiles streamed through
   the WSI read stage, logging every epoch to MLflow (loss, images/s, schedules, probe scores);
4. the teacher's backbone becomes ``<output>/encoder.pt`` (what ``ingest.wsi.encoder.weights`` loads), its
   identity ``<backbone>@sha256:<hex>``, and a version of the MLflow registered model ``name``;
5. with ``embed`` (or ``region.enabled``), the cohort's slides are embedded with it (the WSI ingest:
   ``wsi_tiles``, ``wsi_slide``, ``wsi_patient`` get new versions whose lineage names the encoder); with
   ``region.enabled`` the 4096 level follows (:mod:`mmray.train.pretrain.regions` -> ``wsi_regions_hipt``).

``<output>/pretrain.json`` records all of it with the run's key (config hash + the slides' fingerprints): a
rerun with the same key skips training and returns the recorded result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmray import uri as uri_mod
from mmray.config import config_hash, to_dict
from mmray.errors import DataError
from mmray.train.pretrain.config import PretrainConfig

log = logging.getLogger("mmray.pretrain")
RESULT = "pretrain.json"
ENCODER_FILE = "encoder.pt"
EXIT_OK, EXIT_PARTIAL = 0, 3


@dataclass
class PretrainReport:
    name: str
    output: str
    encoder_uri: str
    encoder_id: str
    backbone: str
    input_px: int
    embed_dim: int
    history: list[dict]
    n_slides: int
    n_tiles: int
    seconds: float
    key: str
    failures: list[dict] = field(default_factory=list)
    mlflow: dict = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)  # feature groups written (embed, region level)
    region: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    resumed: bool = False

    @property
    def exit_code(self) -> int:
        return EXIT_PARTIAL if self.failures else EXIT_OK

    def probe(self, epoch: int = -1) -> dict[str, float]:
        rows = [h for h in self.history if any(k.startswith("probe_") for k in h)]
        return {k: v for k, v in rows[epoch].items() if k.startswith("probe_")} if rows else {}

    def text(self) -> str:
        first, last = self.probe(0), self.probe(-1)
        probe = "; ".join(f"{k} {first.get(k, float('nan')):.3f} -> {v:.3f}" for k, v in last.items())
        lines = [f"pretrain {self.name}: {self.backbone} on {self.n_tiles} tiles of {self.n_slides} slide(s), "
                 f"{len(self.history) - 1} epoch(s) in {self.seconds:.0f} s{' (resumed)' if self.resumed else ''}",
                 f"  encoder {self.encoder_id} -> {self.encoder_uri}"]
        if probe:
            lines.append(f"  probe (random init -> trained): {probe}")
        if self.mlflow.get("version"):
            lines.append(f"  registered as {self.name} v{self.mlflow['version']} ({self.mlflow.get('tracking_uri')})")
        if self.groups:
            lines.append("  wrote " + ", ".join(f"{g}@{v}" for g, v in self.groups.items()))
        lines += [f"  FAILED {f['item']}: {f['reason']}" for f in self.failures]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_json(self) -> dict:
        return to_dict(dataclasses.asdict(self))


def _patient_key():
    from mmray.ingest.pseudonym import pseudonymiser_from_env

    return pseudonymiser_from_env()


def run_key(cfg: PretrainConfig, fingerprints: dict[str, dict]) -> str:
    """The config (without paths and run switches) and the slides' fingerprints."""
    plain = dataclasses.replace(cfg, output=None, workdir=None, force=False, embed=False, cohort="",
                                mlflow=dataclasses.replace(cfg.mlflow, tracking_uri=None, workdir=None))
    fp = {s: {k: v.get(k) for k in ("size_bytes", "etag", "mpp")} for s, v in sorted(fingerprints.items())}
    return config_hash({"config": plain, "slides": fp})[:16]


def default_output(store: str, name: str, key: str) -> str:
    return uri_mod.join(store, "_encoders", f"{name}-{key}")


def _read_json(uri: str) -> dict | None:
    try:
        return json.loads(uri_mod.read_bytes(uri))
    except (FileNotFoundError, OSError, ValueError):
        return None


def _labels(store, cfg: PretrainConfig) -> tuple[dict[str, str] | None, str | None]:
    """``patient_id -> label`` for the probe, or ``(None, why not)``."""
    if not cfg.probe.enabled:
        return None, None
    group = cfg.probe.labels_group
    if store.latest(group) is None:
        return None, f"probe off: the store has no {group!r} group (run the tables ingest first)"
    table = store.read_table(group)
    if cfg.probe.label not in table.columns:
        return None, f"probe off: {group!r} has no column {cfg.probe.label!r} (columns: {list(table.columns)[:12]})"
    table = table[table[cfg.probe.label].notna() & (table[cfg.probe.label].astype(str) != "")]
    return dict(zip(table["patient_id"].astype(str), table[cfg.probe.label].astype(str))), None


def export_encoder(state: dict, *, backbone: str, meta: dict) -> bytes:
    """``encoder.pt`` bytes: the teacher's backbone state dict under ``teacher`` (what the encoder registry
    unwraps) and ``mmray`` metadata."""
    sd = {k[len("backbone."):]: v.clone() for k, v in state["teacher"].items() if k.startswith("backbone.")}
    buf = io.BytesIO()
    torch.save({"teacher": sd, "mmray": {"backbone": backbone, **meta}}, buf)
    return buf.getvalue()


def run_pretrain(cfg: PretrainConfig) -> PretrainReport:
    """Run the job (module doc); Ray is started here when the caller has not."""
    from mmray.cli import init_ray
    from mmray.cohort import load_cohort
    from mmray.features.tile_pipeline import Source
    from mmray.ingest import slide_source
    from mmray.ingest.pseudonym import source_label
    from mmray.ingest.slide_ids import slide_list
    from mmray.ingest.wsi import _safe_fingerprint
    from mmray.store import FeatureStore

    t0 = time.perf_counter()
    store = FeatureStore(cfg.store)
    pkey = _patient_key()
    slides, bad = slide_list(load_cohort(cfg.cohort).manifest(), pkey)
    if cfg.data.max_slides and len(slides) > cfg.data.max_slides:
        import numpy as np

        pick = np.sort(np.random.default_rng(cfg.data.seed).choice(len(slides), cfg.data.max_slides, replace=False))
        slides = [slides[i] for i in pick]
    failures = [dict(f, stage="pretrain") for f in bad]
    with ThreadPoolExecutor(max_workers=8) as pool:
        prints = dict(zip([s["slide_id"] for s in slides], pool.map(_safe_fingerprint, [s["uri"] for s in slides])))
    label_of = {s["slide_id"]: source_label(pkey, s["uri"]) for s in slides}
    for s in slides:
        if isinstance(prints[s["slide_id"]], str):
            failures.append({"item": label_of[s["slide_id"]], "patient_id": s["patient_id"],
                             "reason": prints[s["slide_id"]].replace(s["uri"], label_of[s["slide_id"]]),
                             "slide_id": s["slide_id"]})
    slides = [s for s in slides if not isinstance(prints[s["slide_id"]], str)]
    if not slides:
        raise DataError(f"pretrain: no readable slide in {cfg.cohort} ({len(failures)} failed); nothing to learn from")
    fps = {s["slide_id"]: {**prints[s["slide_id"]], "mpp": s.get("mpp")} for s in slides}
    key = run_key(cfg, fps)
    output = cfg.output or default_output(store.uri, cfg.name, key)
    done = _read_json(uri_mod.join(output, RESULT))
    if done and done.get("key") == key and not cfg.force:
        report = PretrainReport(**{k: v for k, v in done.items() if k in {f.name for f in dataclasses.fields(
            PretrainReport)}})
        report.resumed = True
        report.groups = {}  # what this call writes; the finished run's groups are in its pretrain.json
        log.info("pretrain: %s already holds a finished run with this config and these slides", output)
    else:
        init_ray(None)
        wsi = cfg.wsi_config()
        scratch = slide_source.new_scratch_dir(wsi.read.scratch_dir)
        source = Source(scratch_dir=scratch, tries=wsi.read.download_tries,
                        max_bytes=int(wsi.read.scratch_max_gb * 2**30), max_open=wsi.read.max_open_slides)
        try:
            report = _train(cfg, store=store, slides=slides, spec=wsi.tiling(), limits=wsi.limits(), source=source,
                            label_of=label_of, failures=failures, key=key, output=output)
        finally:
            slide_source.clean_scratch(scratch)
        if report.failures:
            store.record_failures("pretrain", report.failures)
    if (cfg.embed or cfg.region.enabled) and not (report.resumed and _embedded_with(store, report.encoder_id)):
        init_ray(None)
        _embed(cfg, report, store=store, patient_key=pkey)
    if cfg.region.enabled:
        from mmray.train.pretrain.regions import run_regions

        report.region = run_regions(cfg, store=store, tile_encoder_id=report.encoder_id, output=output,
                                    tracking=report.mlflow)
        report.groups.update(report.region.get("groups", {}))
    if report.resumed:
        return report
    report.seconds = time.perf_counter() - t0
    uri_mod.write_bytes(uri_mod.join(output, RESULT), (json.dumps(report.to_json(), indent=1) + "\n").encode())
    return report


def _train(cfg: PretrainConfig, *, store, slides, spec, limits, source, label_of, failures, key,
           output) -> PretrainReport:
    import numpy as np

    from mmray.registry.encoders import EpochLogger, register_encoder, start_run
    from mmray.train.pretrain.loop import DinoRunSpec, fit_dino, iters_per_epoch
    from mmray.train.pretrain.tile_task import ProbeSet, TileDinoTask
    from mmray.train.pretrain.tiles_data import plan_cohort, pixel_dataset, read_all, sample_tiles

    d, notes = cfg.data, []
    log.info("pretrain: planning the tissue tiles of %d slide(s)", len(slides))
    rows, planned_bad = plan_cohort(slides, spec=spec, source=source, limits=limits)
    pid = {s["slide_id"]: s["patient_id"] for s in slides}
    uris = {s["slide_id"]: s["uri"] for s in slides}
    for sid, reason in sorted(planned_bad.items()):
        failures.append({"item": label_of[sid], "patient_id": pid[sid], "slide_id": sid,
                         "reason": reason.replace(uris[sid], label_of[sid])})
    labels, why = _labels(store, cfg)
    if why:
        notes.append(why)
    sample = sample_tiles(rows, tiles_per_slide=d.tiles_per_slide, seed=d.seed, labels=labels,
                          probe_slides=cfg.probe.slides if labels else 0, probe_tiles=cfg.probe.tiles_per_slide)
    if sample.train.empty:
        raise DataError(f"pretrain: no tissue tile left to train on ({len(failures)} slide(s) failed)")
    probe = None
    if len(sample.probe):
        got = read_all(sample.probe, tile_px=spec.tile_px, source=source, keep=("patient_id", "slide_id"),
                       num_cpus=d.read_num_cpus)
        lab = dict(zip(sample.probe["patient_id"].astype(str), sample.probe["label"].astype(str)))
        probe = ProbeSet(got["pixels"], np.array([lab[str(p)] for p in got["patient_id"]]),
                         np.asarray(got["patient_id"]).astype(str), label_name=cfg.probe.label)
        log.info("pretrain: probe of %d tiles from %d held-out slide(s), label %r", len(probe),
                 len(sample.probe_slides), cfg.probe.label)
    dino = cfg.dino
    task = TileDinoTask(backbone=cfg.backbone, crops=cfg.crops, n_global=dino.global_crops_number,
                        n_local=dino.local_crops_number, probe=probe, seed=dino.seed)
    n_train = len(sample.train)
    iters = iters_per_epoch(int(n_train * (1 - d.max_read_failure_fraction)), batch_size=dino.batch_size,
                            workers=cfg.train.workers)
    params = {"backbone": cfg.backbone, "n_slides": len(slides), "n_tiles": n_train, "iters_per_epoch": iters,
              **{f"dino.{k}": v for k, v in dataclasses.asdict(dino).items()},
              **{f"crops.{k}": v for k, v in dataclasses.asdict(cfg.crops).items()},
              **{f"data.{k}": v for k, v in dataclasses.asdict(d).items()},
              "workers": cfg.train.workers, "use_gpu": cfg.train.use_gpu, "tile_px": spec.tile_px,
              "target_mpp": spec.target_mpp}
    tracking = {}
    on_epoch = None
    if cfg.mlflow.enabled:
        uri, run_id = start_run(cfg.mlflow, store=store.uri, run_name=f"{cfg.name}-{key}", params=params,
                                tags={"stage": "pretrain", "key": key, "name": cfg.name})
        tracking = {"tracking_uri": uri, "run_id": run_id, "experiment": cfg.mlflow.experiment}
        on_epoch = EpochLogger(uri, run_id)
    run_spec = DinoRunSpec(task=task, dino=dino, iters_per_epoch=iters, world_size=cfg.train.workers,
                           shuffle_buffer_rows=d.shuffle_buffer_batches * dino.batch_size, on_epoch=on_epoch,
                           name=f"pretrain {cfg.name}")
    ds = pixel_dataset(sample.train, tile_px=spec.tile_px, source=source, block_rows=d.read_batch_size,
                       num_cpus=d.read_num_cpus, concurrency=d.read_concurrency, cache=d.cache, seed=d.seed)
    workdir = Path(cfg.workdir or (uri_mod.join(output, "runs") if not uri_mod.is_s3(output)
                                   else Path("mmray_work") / f"{cfg.name}-{key}"))
    log.info("pretrain: DINO %s, %d epoch(s) x %d step(s) of %d on %d worker(s) over %d tiles of %d slide(s)",
             cfg.backbone, dino.epochs, iters, dino.batch_size, cfg.train.workers, n_train,
             sample.train["slide_id"].nunique())
    fit = fit_dino(run_spec, train=ds, run_dir=workdir / "tiles", executor=cfg.train.executor,
                   workers=cfg.train.workers, use_gpu=cfg.train.use_gpu, cpus_per_worker=cfg.train.cpus_per_worker,
                   max_failures=cfg.train.max_failures, keep=cfg.train.keep_checkpoints,
                   threads=cfg.train.threads_per_worker)
    meta = {"input_px": cfg.crops.global_px, "embed_dim": fit.embed_dim, "epochs": dino.epochs, "key": key,
            "tile_px": spec.tile_px, "target_mpp": spec.target_mpp}
    blob = export_encoder(fit.load_state(), backbone=cfg.backbone, meta=meta)
    encoder_uri = uri_mod.join(output, ENCODER_FILE)
    uri_mod.write_bytes(encoder_uri, blob)
    encoder_id = f"{cfg.backbone}@sha256:{hashlib.sha256(blob).hexdigest()}"
    if tracking:
        local = encoder_uri if not uri_mod.is_s3(encoder_uri) else _local_copy(blob)
        tracking["version"] = register_encoder(
            tracking_uri=tracking["tracking_uri"], run_id=tracking["run_id"], name=cfg.name, arch=cfg.backbone,
            input_px=cfg.crops.global_px, encoder_path=local, encoder_id=encoder_id,
            extra_tags={"key": key, "tile_px": spec.tile_px, "target_mpp": spec.target_mpp},
            register=cfg.mlflow.register)
        tracking["model"] = cfg.name if tracking["version"] else None
    return PretrainReport(name=cfg.name, output=output, encoder_uri=encoder_uri, encoder_id=encoder_id,
                          backbone=cfg.backbone, input_px=cfg.crops.global_px, embed_dim=fit.embed_dim,
                          history=fit.history, n_slides=int(sample.train["slide_id"].nunique()), n_tiles=n_train,
                          seconds=fit.seconds, key=key, failures=failures, mlflow=tracking, notes=notes)


def _local_copy(blob: bytes) -> str:
    import tempfile

    f = tempfile.NamedTemporaryFile(prefix="mmray-encoder-", suffix=".pt", delete=False)
    f.write(blob)
    f.close()
    return f.name


def encoder_section(cfg: PretrainConfig, report: PretrainReport) -> dict:
    """The ``wsi.encoder`` section that embeds with the pretrained encoder (the job's other encoder keys kept)."""
    base = dict(cfg.wsi.get("encoder") or {})
    return {**base, "name": report.backbone, "weights": report.encoder_uri, "input_px": report.input_px,
            "strict_weights": True}


def slide_features_encoder(store) -> str:
    """The encoder identity (``name@...``) the store's newest patient slide features were embedded with ("" when
    there are none): ``wsi_patient`` records the ``wsi_slide`` version it pools, which records the embed key."""
    patient = store.latest("wsi_patient")
    if patient is None:
        return ""
    slides = store.manifest("wsi_patient", version=patient)["params"].get("slide_version")
    if slides is None:
        return ""
    return store.manifest("wsi_slide", version=slides)["params"].get("embed_key", {}).get("encoder_id", "")


def _embedded_with(store, encoder_id: str) -> bool:
    """Whether the store's newest slide features were embedded with this encoder (a rerun has nothing to do:
    the slides that failed then would only fail again, and they are in the failures table)."""
    return slide_features_encoder(store) == encoder_id


def _embed(cfg: PretrainConfig, report: PretrainReport, *, store, patient_key) -> None:
    """Embed the cohort's slides with the new encoder: new versions of the WSI groups (the WSI ingest)."""
    from mmray.cohort import load_cohort
    from mmray.config import build
    from mmray.ingest.run import IngestContext
    from mmray.ingest.wsi import WsiConfig, ingest_wsi

    wsi = build(WsiConfig, {**cfg.wsi, "encoder": encoder_section(cfg, report)})
    ctx = IngestContext(cohort=load_cohort(cfg.cohort), store=store, config=wsi, force=False,
                        patient_key=patient_key)
    rep = ingest_wsi(ctx)
    report.groups.update(rep.groups)
    if rep.failures:
        store.record_failures("pretrain-embed", rep.failures)
        report.notes.append(f"embedding: {len(rep.failures)} slide(s) failed (failures table, stage pretrain-embed)")
