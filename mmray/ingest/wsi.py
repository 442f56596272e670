"""Ingest whole-slide images: tiles -> embeddings -> ``wsi_tiles``, ``wsi_slide``, ``wsi_patient``.

``ingest_wsi(ctx)`` takes the cohort manifest's ``wsi`` rows, skips slides the
store already holds with the same encoder identity, tiling parameters, patient
key and file (``ctx.force`` recomputes), runs the Ray Data tile pipeline
(:mod:`mmray.features.tile_pipeline`) on the rest, commits a new ``wsi_tiles``
version that carries the skipped slides forward without copying them, then
updates the slide and patient aggregates (:mod:`mmray.ingest.wsi_aggregates`).
Slides that cannot be read are reported as failures; the rest go on.

The ``wsi:`` section of the ingest YAML is :class:`WsiConfig` (every field has
a working default).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mmray import uri as uri_mod
from mmray.features.encoders import EncoderConfig, resolve
from mmray.features.nuclei_stage import NucleiConfig
from mmray.features.stain import StainConfig
from mmray.features.tile_filter import TileFilterConfig
from mmray.features.tile_pipeline import ReadConfig, Source, embedding_dataset, pipeline_context
from mmray.features.tiling import PlanLimits, TilingSpec
from mmray.features.tissue import TissueParams
from mmray.ingest import slide_source
from mmray.ingest.pseudonym import source_label
from mmray.ingest.report import ModalityReport
from mmray.ingest.slide_ids import slide_list
from mmray.ingest.wsi_aggregates import PATIENTS, SLIDES, TILES, update_patient_aggregates, update_slide_aggregates
from mmray.report.site_signature import SiteSignatureConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WsiConfig:
    """The ``wsi:`` section of the ingest YAML."""

    target_mpp: float = 0.5  # micrometres per pixel of tiles and regions
    tile_px: int = 256
    region_px: int = 4096  # 0: tiles only
    min_tissue_fraction: float = 0.25  # per tile, from the thumbnail tissue mask
    mpp_override: float | None = None  # level-0 resolution for slides without (or with wrong) metadata
    min_mpp: float = PlanLimits.min_mpp  # plausible level-0 resolutions (um/px); a slide outside fails at planning
    max_mpp: float = PlanLimits.max_mpp
    max_upsample: float = PlanLimits.max_upsample  # a slide whose level 0 is coarser than this x target_mpp fails
    max_tiles_per_slide: int = PlanLimits.max_tiles_per_slide  # tiles + regions; a slide whose plan has more fails
    tissue: TissueParams = field(default_factory=TissueParams)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    read: ReadConfig = field(default_factory=ReadConfig)
    encoder_resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources per encoder actor
    read_resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources per read task
    rows_per_file: int = 4096  # tile rows per Parquet file of wsi_tiles
    object_store_limit_mb: int | None = None  # cap on the object store the pipeline uses (default: Ray's)
    reserve_op_resources: bool = False  # Ray Data's per-operator resource reservation (see pipeline_context)
    progress_interval_s: float = 10.0  # per-slide progress log period (0: off)
    nuclei: NucleiConfig = field(default_factory=NucleiConfig)  # wsi_nuclei, wsi_nuclei_slide/_patient
    stain: StainConfig = field(default_factory=StainConfig)  # stain normalisation (reference fitted per cohort)
    tile_filter: TileFilterConfig = field(default_factory=TileFilterConfig)  # tumour tiles, learned from annotations
    site_signature: SiteSignatureConfig = field(default_factory=SiteSignatureConfig)  # leakage: site from slides

    def validate(self):
        if self.target_mpp <= 0:
            yield ("target_mpp", f"must be positive, got {self.target_mpp}")
        if self.tile_px < 16:
            yield ("tile_px", f"must be at least 16, got {self.tile_px}")
        if self.region_px and (self.region_px < self.tile_px or self.region_px % self.tile_px):
            yield ("region_px", f"must be 0 (no regions) or a multiple of tile_px={self.tile_px}, got {self.region_px}")
        if not 0 <= self.min_tissue_fraction <= 1:
            yield ("min_tissue_fraction", f"must be within [0, 1], got {self.min_tissue_fraction}")
        if not 0 < self.min_mpp < self.max_mpp:
            yield ("min_mpp", f"need 0 < min_mpp < max_mpp (micrometres per pixel), got {self.min_mpp} and "
                              f"{self.max_mpp}")
        elif self.mpp_override is not None and not self.min_mpp <= self.mpp_override <= self.max_mpp:
            yield ("mpp_override", f"must be micrometres per pixel within [min_mpp, max_mpp] = [{self.min_mpp}, "
                                   f"{self.max_mpp}], got {self.mpp_override}")
        if self.max_upsample < 1:
            yield ("max_upsample", f"must be at least 1 (no upsampling), got {self.max_upsample}")
        if self.max_tiles_per_slide < 1:
            yield ("max_tiles_per_slide", f"must be at least 1, got {self.max_tiles_per_slide}")
        if self.rows_per_file < 1:
            yield ("rows_per_file", f"must be at least 1, got {self.rows_per_file}")

    def tiling(self) -> TilingSpec:
        return TilingSpec(target_mpp=self.target_mpp, tile_px=self.tile_px, region_px=self.region_px,
                          min_tissue_fraction=self.min_tissue_fraction, mpp_override=self.mpp_override,
                          tissue=self.tissue)

    def limits(self) -> PlanLimits:
        return PlanLimits(min_mpp=self.min_mpp, max_mpp=self.max_mpp, max_upsample=self.max_upsample,
                          max_tiles_per_slide=self.max_tiles_per_slide)


CONFIG = WsiConfig


def fingerprint(uri: str) -> dict:
    """A cheap identity of a slide file: size plus a hash of its first and last 64 KiB (S3: the ETag)."""
    if uri_mod.is_s3(uri):
        return uri_mod.checksum(uri)
    path = Path(uri)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest, size = hashlib.sha256(), 0
    for f in files:
        n = f.stat().st_size
        size += n
        digest.update(f"{f.relative_to(path) if path.is_dir() else f.name}:{n}".encode())
        with open(f, "rb") as fh:
            digest.update(fh.read(1 << 16))
            if n > 1 << 16:
                fh.seek(max(n - (1 << 16), 1 << 16))
                digest.update(fh.read())
    return {"uri": uri, "size_bytes": size, "etag": f"headtail-sha256:{digest.hexdigest()}"}


def embed_key(cfg: WsiConfig, encoder_id: str, *, stain: dict | None = None) -> dict:
    """What makes two embeddings of one slide the same: resume compares this (``stain``: the normalisation
    settings and reference, :meth:`mmray.ingest.wsi_stain.StainPlan.params`)."""
    key = {"encoder_id": encoder_id, "input_px": cfg.encoder.input_px, "tiling": dataclasses.asdict(cfg.tiling())}
    if stain:
        key["stain"] = stain
    return key


def _resume(store, slides: list[dict], key: dict, sources: dict[str, dict], force: bool, *, group: str = TILES,
            key_param: str = "embed_key"):
    """``(todo, carry, previous version)``: slides to embed, and slides the latest version already holds."""
    prev = store.latest(group)
    if prev is None or force:
        return slides, [], prev
    man = store.manifest(group, version=prev)
    if man["params"].get(key_param) != key:
        log.info("wsi: settings changed since %s@%s: computing every slide again", group, prev)
        return slides, [], prev
    bags = store.bags(group, version=prev).set_index("bag_id")
    old_sources = {s.get("slide_id"): s for s in man.get("sources", [])}
    todo, carry = [], []
    for s in slides:
        sid, old = s["slide_id"], old_sources.get(s["slide_id"], {})
        same = (sid in bags.index and bags.at[sid, "patient_id"] == s["patient_id"]
                and pd.Timestamp(bags.at[sid, "event_time"]) == pd.Timestamp(s["event_time"])
                and {k: old.get(k) for k in ("size_bytes", "etag", "sha256")}
                == {k: sources[sid].get(k) for k in ("size_bytes", "etag", "sha256")})
        same = same and old.get("mpp") == sources[sid].get("mpp")  # a new manifest mpp re-plans the slide
        (carry if same else todo).append(s["slide_id"] if same else s)
    return todo, carry, prev


def ingest_wsi(ctx) -> ModalityReport:
    """Embed the cohort's slides into the feature store (see the module docstring)."""
    from mmray.ingest.wsi_stain import StainPlan

    cfg: WsiConfig = ctx.config
    report = ModalityReport("wsi")
    slides, bad = slide_list(ctx.cohort.manifest(), ctx.patient_key)
    report.n_items = len(slides) + len(bad)
    for f in bad:
        report.fail(**f)
    encoder = resolve(cfg.encoder, store=ctx.store.uri)
    report.notes += list(encoder.notes)
    sources: dict[str, dict] = {}
    with ThreadPoolExecutor(max_workers=min(16, (os.cpu_count() or 1) * 4)) as pool:
        for s, src in zip(slides, pool.map(_safe_fingerprint, [s["uri"] for s in slides])):
            label = source_label(ctx.patient_key, s["uri"])
            if isinstance(src, str):
                report.fail(item=label, patient_id=s["patient_id"], reason=_named(src, s["uri"], label),
                            slide_id=s["slide_id"])
            else:
                sources[s["slide_id"]] = {**src, "uri": label, "slide_id": s["slide_id"],
                                          **({"mpp": s["mpp"]} if s.get("mpp") is not None else {})}
    slides = [s for s in slides if s["slide_id"] in sources]
    scratch = slide_source.new_scratch_dir(cfg.read.scratch_dir)
    source = Source(scratch_dir=scratch, tries=cfg.read.download_tries,
                    max_bytes=int(cfg.read.scratch_max_gb * 2**30), max_open=cfg.read.max_open_slides)
    try:
        prev = ctx.store.latest(TILES)
        stain = StainPlan(cfg, source=source, limits=cfg.limits(), force=ctx.force,
                          previous=ctx.store.manifest(TILES, version=prev)["params"] if prev else None)
        if stain.enabled and stain.reference is None and slides:
            from mmray.cli import init_ray

            init_ray(None)
            stain.fit_reference(slides)
        key = embed_key(cfg, encoder.encoder_id, stain=stain.params())
        tiles_version = _embed(ctx, slides=slides, sources=sources, key=key, encoder=encoder, source=source,
                               stain=stain, report=report)
        if tiles_version is None:
            return report
        from mmray.ingest.wsi_nuclei import ingest_nuclei, tile_filter_threshold, update_nuclei_aggregates
        from mmray.ingest.wsi_tumour import ingest_tumour

        nuclei_version = ingest_nuclei(ctx, slides=slides, sources=sources, report=report, source=source,
                                       stain=stain)
        tumour_version = ingest_tumour(ctx, slides=slides, report=report, tiles_version=tiles_version)
        threshold = tile_filter_threshold(cfg) if tumour_version else None
        if nuclei_version:
            for group, v in update_nuclei_aggregates(ctx.store, nuclei_version=nuclei_version, threshold=threshold,
                                                     force=ctx.force).items():
                report.groups[group] = v
        report.notes += stain.notes
        tile_filter = {"version": tumour_version, "threshold": threshold} if tumour_version else None
        slide_version, _ = update_slide_aggregates(ctx.store, tiles_version=tiles_version, embed_key=key,
                                                   force=ctx.force, tile_filter=tile_filter)
        if slide_version:
            report.groups[SLIDES] = slide_version
        patient_version = update_patient_aggregates(ctx.store,
                                                    slide_version=slide_version or ctx.store.latest(SLIDES),
                                                    force=ctx.force or bool(slide_version))
        if patient_version:
            report.groups[PATIENTS] = patient_version
        from mmray.report.site_signature import site_signature

        site_signature(ctx, report=report)
    finally:
        slide_source.clean_scratch(scratch)
    return report


def _lineage(store, group: str, version: str | None) -> dict[str, dict]:
    """slide_id -> its entry in the sources of ``group@version`` (empty without a version)."""
    if version is None:
        return {}
    return {s.get("slide_id"): s for s in store.manifest(group, version=version).get("sources", [])}


def _embed(ctx, *, slides, sources, key, encoder, source, stain, report) -> str | None:
    """Run the tile pipeline on the slides not already current; returns the ``wsi_tiles`` version."""
    from mmray.cli import init_ray
    from mmray.features.tile_progress import ProgressLog
    from mmray.features.tile_sink import TileEmbeddingSink

    cfg = ctx.config
    todo, carry, prev = _resume(ctx.store, slides, key, sources, ctx.force)
    report.n_skipped = len(carry)
    prev_bags = set(ctx.store.bag_ids(TILES, version=prev)) if prev else set()
    if not todo and set(carry) == prev_bags:
        return prev
    init_ray(None)
    log.info("wsi: %d slide(s) to embed with %s, %d already in %s", len(todo), encoder.encoder_id, len(carry), TILES)
    todo = stain.attach(todo)
    old = _lineage(ctx.store, TILES, prev)
    lineage = ([{**sources[s["slide_id"]], **stain.lineage(s["slide_id"])} for s in todo]
               + [{**sources[c], **{k: old[c][k] for k in ("stain",) if k in old.get(c, {})}} for c in carry])
    params = {"embed_key": key, "encoder": dataclasses.asdict(cfg.encoder), "rows_per_file": cfg.rows_per_file}
    if stain.enabled:
        params["stain"] = stain.params()
    transform = ({"method": cfg.stain.method, "reference": stain.reference.tolist(), "io": cfg.stain.io,
                  "beta": cfg.stain.beta} if stain.enabled else None)
    context = pipeline_context(object_store_limit_mb=cfg.object_store_limit_mb,
                               reserve_op_resources=cfg.reserve_op_resources)
    with context, ProgressLog(n_slides=len(todo), interval_s=cfg.progress_interval_s) as progress:
        sink = TileEmbeddingSink(ctx.store, TILES, params=params, sources=lineage,
                                 carry_from=prev if carry else None, carry_bags=carry,
                                 rows_per_file=cfg.rows_per_file, progress=progress)
        if todo:
            ds = embedding_dataset(todo, spec=cfg.tiling(), read=cfg.read, source=source, encoder=encoder,
                                   cfg=cfg.encoder, limits=cfg.limits(), progress=progress,
                                   read_resources=cfg.read_resources, encoder_resources=cfg.encoder_resources,
                                   stain=transform, probe_tiles=cfg.stain.probe_tiles)
            ds.write_datasink(sink)
        else:
            sink.commit([])
    uris = {s["slide_id"]: s["uri"] for s in todo}
    for sid, (pid, reason) in sorted(sink.failures.items()):
        label = sources[sid]["uri"] if sid in sources else sid
        report.fail(item=label, patient_id=pid, reason=_named(reason, uris.get(sid, ""), label), slide_id=sid)
    report.n_done = len(sink.rows_per_slide)
    if sink.version:
        report.groups[TILES] = sink.version
    return sink.version or prev


def _named(reason: str, uri: str, label: str) -> str:
    """A failure reason that names the slide by its source label (third-party errors may quote the path)."""
    return reason.replace(uri, label) if uri and label != uri else reason


def _safe_fingerprint(uri: str) -> dict | str:
    try:
        return fingerprint(uri)
    except FileNotFoundError:
        return f"slide {uri} does not exist; fix the manifest path"
    except Exception as e:
        return f"cannot read slide {uri}: {type(e).__name__}: {e}"
