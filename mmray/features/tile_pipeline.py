"""The Ray Data tile pipeline: slides -> tile coordinates -> pixels -> embeddings.

::

    from_items(slides)                      one row per slide
      .map_batches(plan_batch)              thumbnail, tissue mask, grid: one row per tile and region,
      .repartition(target_num_rows_per_block=read batch)   in blocks of one read batch
      .map_batches(read_pixels)             CPU tasks: OpenSlide reads, uint8 (N, tile_px, tile_px, 3)
      .map_batches(TileEncoder, compute=ActorPoolStrategy(size=pool_size))
                                            GPU (bf16/fp16 autocast, channels_last) or CPU actors
      -> a Datasink (mmray.features.tile_sink.TileEmbeddingSink writes the feature store)

Everything streams: Ray Data's streaming executor keeps a bounded number of
pixel blocks in flight (``object_store_limit_mb`` caps the object store it
may use), so neither a whole slide nor a cohort's tiles is ever in memory.  A
slide that cannot be opened or read travels as rows with a non-empty
``error`` column, so failures reach the sink (and the failures table) without
stopping other slides.  Read tasks keep a few slides open per worker process
(:func:`mmray.ingest.slide_source.slide_handle`).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from mmray.errors import InputError
from mmray.features.encoders import EncoderConfig, EncoderSpec
from mmray.features.tiling import PlanLimits, TilingSpec, plan_slide, read_tile
from mmray.ingest import slide_resolution, slide_source

log = logging.getLogger(__name__)

META_TYPES = {"slide_id": pa.string(), "patient_id": pa.string(), "event_time": pa.string(), "scale": pa.string(),
              "x": pa.int64(), "y": pa.int64(), "tile_px": pa.int32(), "size_l0": pa.int64(), "mpp": pa.float64(),
              "region_id": pa.int64(), "level": pa.int32(), "tissue_fraction": pa.float32(), "error": pa.string()}
META = tuple(META_TYPES)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ReadConfig:
    """The ``wsi.read`` section: tile-reading tasks and slide downloads."""

    batch_size: int = 128  # tiles per read task (fewer, larger tasks: less Ray overhead per tile)
    num_cpus: float = 1.0  # per read task
    concurrency: int | None = None  # read tasks at once (default: as many as CPUs allow)
    scratch_dir: str | None = None  # local folder for slides downloaded from s3:// (default: system temp)
    scratch_max_gb: float = 50.0  # per node; least recently used copies are removed beyond it
    download_tries: int = 4
    max_open_slides: int = 4  # per worker process
    memory_mb: int = 512  # memory each read task asks Ray for (pixels, OpenSlide caches, the process)

    def validate(self):
        if self.batch_size < 1 or self.download_tries < 1 or self.max_open_slides < 1 or self.memory_mb < 1:
            yield ("", "batch_size, download_tries, max_open_slides and memory_mb must be at least 1")
        if self.num_cpus <= 0 or self.scratch_max_gb <= 0:
            yield ("", "num_cpus and scratch_max_gb must be positive")


@dataclass(frozen=True)
class Source:
    """Where read tasks find slides (picklable; one per run)."""

    scratch_dir: str
    tries: int = 4
    max_bytes: int = slide_source.DEFAULT_SCRATCH_MAX_BYTES
    max_open: int = 4

    def handle(self, uri: str):
        return slide_source.slide_handle(uri, scratch_dir=self.scratch_dir, tries=self.tries,
                                         max_bytes=self.max_bytes, max_open=self.max_open)


def _columns(slide: dict, *, n: int, **cols) -> dict[str, np.ndarray]:
    """Column arrays for ``n`` rows of ``slide``: its keys repeated (and its ``stain`` vector, when it has
    one), plus ``cols`` (scalars broadcast)."""
    out = {k: np.full(n, slide[k], dtype=object) for k in ("slide_id", "patient_id", "event_time", "uri")}
    if slide.get("stain") is not None:
        out["stain"] = np.tile(np.asarray(slide["stain"], np.float32), (n, 1))
    for k, v in cols.items():
        out[k] = np.full(n, v, dtype=object if isinstance(v, str) else None) if np.isscalar(v) else np.asarray(v)
    return out


def _error_columns(slide: dict, reason: str, spec: TilingSpec) -> dict[str, np.ndarray]:
    return _columns(slide, n=1, scale="error", x=0, y=0, tile_px=spec.tile_px, size_l0=0, mpp=spec.target_mpp,
                    region_id=-1, level=0, read_px=0, tissue_fraction=0.0, error=reason)


def plan_columns(slide: dict, *, spec: TilingSpec, source: Source,
                 limits: PlanLimits = PlanLimits()) -> dict[str, np.ndarray]:
    """Columns with one row per planned region and tile of ``slide`` (slide_id, patient_id, event_time, uri;
    optional ``mpp``, the manifest's level-0 resolution for it).

    A slide that fails (unreadable, implausible resolution, too much upsampling, too many tiles, no tissue)
    gets one row whose ``error`` says why.
    """
    name = slide["slide_id"]
    given = slide.get("mpp")
    given = None if given is None or np.isnan(given) else float(given)
    try:
        try:
            handle = source.handle(slide["uri"])
        except InputError as e:
            raise InputError(f"slide {name}: {e}", item=name) from e
        mpp_l0 = slide_resolution.slide_mpp(handle, name=name, mpp_override=spec.mpp_override, manifest_mpp=given,
                                            mpp_range=limits.mpp_range)
        t, _, _ = plan_slide(handle, mpp_l0=mpp_l0, spec=spec, limits=limits, name=name,
                             mpp_from=slide_resolution.mpp_source(manifest_mpp=given, mpp_override=spec.mpp_override))
    except InputError as e:
        return _error_columns(slide, str(e), spec)
    except Exception as e:  # OpenSlide errors on damaged files, decoder errors
        slide_source.drop_handle(slide["uri"])
        return _error_columns(slide, f"slide {name}: cannot read it with OpenSlide: {type(e).__name__}: {e}", spec)
    if len(t.tile_x) == 0:
        return _error_columns(slide, f"slide {name}: no {spec.tile_px}-px tile at {spec.target_mpp} mpp has tissue "
                                     f"fraction >= {spec.min_tissue_fraction}; is the slide blank? (else lower "
                                     f"wsi.min_tissue_fraction or wsi.tissue.min_saturation)", spec)
    nr, nt = len(t.region_x), len(t.tile_x)
    both = np.r_[np.zeros(nr, bool), np.ones(nt, bool)]  # regions first, then tiles in reading order
    return _columns(slide, n=nr + nt, scale=np.where(both, "tile", "region").astype(object),
                    x=np.r_[t.region_x, t.tile_x], y=np.r_[t.region_y, t.tile_y],
                    tile_px=np.where(both, spec.tile_px, spec.region_px),
                    size_l0=np.where(both, t.tile_l0, t.region_l0),
                    mpp=spec.target_mpp, region_id=np.r_[t.region_id, t.tile_region],
                    level=np.where(both, t.tile_level, t.region_level),
                    read_px=np.where(both, t.tile_read_px, t.region_read_px),
                    tissue_fraction=np.r_[t.region_tissue, t.tile_tissue].astype(np.float64), error="")


SLIDE_KEYS = ("slide_id", "patient_id", "event_time", "uri", "mpp", "stain")


def probe_rows(slide_id: str, scale: np.ndarray, *, n: int, seed: int = 0) -> np.ndarray:
    """(N,) bool: a seeded choice of ``n`` of the slide's tiles (rows whose ``scale`` is ``tile``)."""
    import hashlib

    out = np.zeros(len(scale), bool)
    tiles = np.flatnonzero(scale == "tile")
    if n <= 0 or tiles.size == 0:
        return out
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(f"probe:{seed}:{slide_id}".encode()).digest()[:8],
                                               "little"))
    out[rng.choice(tiles, size=min(n, tiles.size), replace=False)] = True
    return out


def plan_batch(batch: dict[str, np.ndarray], *, spec: TilingSpec, source: Source, limits: PlanLimits = PlanLimits(),
               progress=None, probe_tiles: int = 0):
    """Ray Data stage: a batch of slides -> the rows of all their tiles and regions (see :func:`plan_columns`).

    Slides with a ``stain`` get a ``probe`` column: ``probe_tiles`` tiles per slide that the encoder also
    embeds without stain normalisation (the site-signature check compares the two).
    """
    parts = []
    for i in range(len(batch["slide_id"])):
        slide = {k: batch[k][i] for k in SLIDE_KEYS if k in batch}
        parts.append(plan_columns(slide, spec=spec, source=source, limits=limits))
        if "stain" in slide:
            parts[-1]["probe"] = probe_rows(str(slide["slide_id"]), parts[-1]["scale"], n=probe_tiles)
        if progress is not None:
            error = parts[-1]["error"][0]  # a failed slide is one row, its error
            progress.planned.remote(slide["slide_id"], 0 if error else len(parts[-1]["x"]), error)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def read_pixels(batch: dict[str, np.ndarray], *, canvas_px: int, source: Source) -> dict[str, np.ndarray]:
    """Add ``pixels`` (N, canvas_px, canvas_px, 3) uint8; a failed read sets the row's ``error``."""
    n = len(batch["x"])
    pixels = np.zeros((n, canvas_px, canvas_px, 3), np.uint8)
    errors = np.asarray(batch["error"], dtype=object).copy()
    dead: dict[str, str] = {}  # slides that failed in this batch: their other tiles need no read
    for i in range(n):
        if errors[i]:
            continue
        uri = batch["uri"][i]
        if uri in dead:
            errors[i] = dead[uri]
            continue
        try:
            pixels[i] = read_tile(source.handle(uri), x=batch["x"][i], y=batch["y"][i], level=batch["level"][i],
                                  read_px=batch["read_px"][i], out_px=canvas_px)
        except InputError as e:
            errors[i] = str(e)
        except Exception as e:  # an OpenSlide handle is unusable after an error: reopen next time
            slide_source.drop_handle(uri)
            errors[i] = (f"slide {batch['slide_id'][i]}: reading the {batch['scale'][i]} at x={batch['x'][i]}, "
                         f"y={batch['y'][i]} failed: {type(e).__name__}: {e}")
        if errors[i]:
            dead[uri] = errors[i]
    out = {k: batch[k] for k in META if k != "error"}
    out.update({k: batch[k] for k in ("stain", "probe") if k in batch})
    out["error"] = errors
    out["pixels"] = pixels
    return out


class TileEncoder:
    """Ray Data stage: uint8 pixels -> embeddings, on GPU when there is one.

    The model is built once in ``__init__``; ``__call__`` normalises (ImageNet
    mean/std) and resizes to the encoder input on the device, runs under
    ``torch.inference_mode()`` with bf16/fp16 autocast and channels_last on
    GPU, and returns an Arrow table: the metadata columns plus ``encoder_id``
    and ``embedding`` (list<float32>; null for rows whose ``error`` is set).
    """

    def __init__(self, spec: EncoderSpec, *, device: str = "auto", precision: str = "bf16",
                 channels_last: bool = True, cpu_threads: int | None = None, progress=None,
                 stain: dict | None = None):
        import torch

        from mmray.features.encoders import build_model

        use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
        if device == "cuda" and not use_cuda:
            raise InputError("wsi.encoder.device is 'cuda' but this worker has no CUDA device", item="encoder")
        self.device = torch.device("cuda" if use_cuda else "cpu")
        if use_cuda:
            torch.backends.cudnn.benchmark = True  # one input shape all run long: pick the fastest kernels once
        elif cpu_threads:
            torch.set_num_threads(cpu_threads)
        self.model, self.dim, self.notes = build_model(spec)
        self.model.to(self.device)
        self.channels_last = channels_last and use_cuda
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision) if use_cuda else None
        self.input_px = spec.input_px
        self.encoder_id = spec.encoder_id
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1) * 255.0
        self.inv_std = 1.0 / (torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1) * 255.0)
        self.progress = progress
        self.stain = stain  # {method, reference, io, beta}: normalise each row with its slide's ``stain``

    def embed(self, pixels: np.ndarray, *, stain: np.ndarray | None = None) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, dim) float32; ``stain`` (N, P): each tile's slide stain, normalised on the
        device to ``self.stain``'s reference (:func:`mmray.features.stain.normalise`)."""
        import torch
        import torch.nn.functional as F

        size = (self.input_px, self.input_px)
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, non_blocking=True)
            if stain is not None and self.stain:
                from mmray.features.stain import normalise

                x = normalise(x, torch.from_numpy(np.asarray(stain, np.float32)).to(self.device),
                              self.stain["reference"], method=self.stain["method"], io=self.stain["io"],
                              beta=self.stain["beta"])
            x = x.permute(0, 3, 1, 2)  # (N, 3, H, W), channels-last strides
            resize = tuple(x.shape[-2:]) != size
            if resize and self.device.type == "cpu":  # torch's uint8 antialiased resize is ~20x the float one
                x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
            x = x.float()
            if resize and self.device.type != "cpu":
                x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
            x = x.sub_(self.mean).mul_(self.inv_std)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
                out = self.model(x)
            return out.float().cpu().numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        ok = np.array([not e for e in batch["error"]], bool)
        emb = np.zeros((len(ok), self.dim), np.float32)
        stain = np.asarray(list(batch["stain"]), np.float32) if self.stain and "stain" in batch else None
        probe = ok & np.asarray(batch["probe"], bool) if stain is not None and "probe" in batch else None
        if ok.any():
            emb[ok] = self.embed(batch["pixels"][ok], stain=None if stain is None else stain[ok])
        if self.progress is not None:  # one fire-and-forget call per batch: {slide: [encoded, failed rows]}
            self.progress.encoded.remote(_per_slide(batch["slide_id"], ok))
        cols = {k: pa.array(list(batch[k]) if batch[k].dtype == object else batch[k]).cast(t)
                for k, t in META_TYPES.items()}
        cols["encoder_id"] = pa.array([self.encoder_id] * len(ok), pa.string())
        flat = pa.array(emb.ravel(), pa.float32())
        offsets = pa.array(np.arange(len(ok) + 1, dtype=np.int32) * self.dim)
        cols["embedding"] = pa.ListArray.from_arrays(offsets, flat, mask=pa.array(~ok))
        if self.stain:  # probe tiles embedded as read too: the site-signature check's "before normalisation"
            raw = np.zeros_like(emb)
            if probe is not None and probe.any():
                raw[probe] = self.embed(batch["pixels"][probe])
            has = probe if probe is not None else np.zeros(len(ok), bool)
            cols["embedding_raw"] = pa.ListArray.from_arrays(offsets, pa.array(raw.ravel(), pa.float32()),
                                                             mask=pa.array(~has))
        return pa.table(cols)


def _per_slide(slide_ids: np.ndarray, ok: np.ndarray) -> dict[str, list[int]]:
    """``{slide_id: [rows encoded, rows that arrived with an error]}`` of one batch."""
    ids, inverse = np.unique(np.asarray(slide_ids, dtype=str), return_inverse=True)
    good = np.bincount(inverse, weights=ok, minlength=len(ids)).astype(int)
    total = np.bincount(inverse, minlength=len(ids))
    return {str(s): [int(g), int(t - g)] for s, g, t in zip(ids, good, total)}


def tile_dataset(slides: list[dict], *, spec: TilingSpec, read: ReadConfig, source: Source,
                 limits: PlanLimits = PlanLimits(), progress=None, resources: dict[str, float] | None = None,
                 probe_tiles: int = 0):
    """Rows of tiles and regions with ``pixels`` (lazy ``ray.data.Dataset``).

    ``slides``: dicts with slide_id, patient_id, event_time, uri and optionally ``mpp`` (level-0 um/px
    that overrides the file's). ``resources``: custom Ray resources each read task asks for
    (e.g. ``{"ingest_cpu": 1}``).
    """
    import ray.data

    ds = ray.data.from_items(slide_items(slides), override_num_blocks=max(1, len(slides)))
    ds = ds.map_batches(plan_batch, batch_size=1, batch_format="numpy",
                        fn_kwargs={"spec": spec, "source": source, "limits": limits, "progress": progress,
                                   "probe_tiles": probe_tiles})
    # A slide's coordinates would be one block; cutting them into read-batch-sized blocks (streaming, no
    # shuffle; Ray fuses this into the planning tasks) lets many read tasks share one slide.
    ds = ds.repartition(target_num_rows_per_block=read.batch_size)
    # The memory request is real (decoded pixels plus OpenSlide's tile caches) and also keeps Ray from
    # fusing the reads into the encoder actors (operators with different resource requests never fuse).
    return ds.map_batches(read_pixels, batch_size=read.batch_size, batch_format="numpy",
                          fn_kwargs={"canvas_px": spec.tile_px, "source": source}, num_cpus=read.num_cpus,
                          memory=read.memory_mb * 2**20, concurrency=read.concurrency, resources=resources or None)


def slide_items(slides: list[dict]) -> list[dict]:
    """The rows a pipeline starts from: the :data:`SLIDE_KEYS` of each slide, with ``mpp`` a float (NaN: the
    file's), so Arrow never sees a null-typed column."""
    return [{**{k: s[k] for k in SLIDE_KEYS if s.get(k) is not None},
             "mpp": np.nan if s.get("mpp") is None else float(s["mpp"])} for s in slides]


@contextlib.contextmanager
def pipeline_context(*, object_store_limit_mb: int | None = None, reserve_op_resources: bool = False):
    """Ray Data settings for one pipeline run, restored afterwards.

    ``object_store_limit_mb`` caps the object store memory the streaming
    executor fills (backpressure beyond it). ``reserve_op_resources`` is Ray
    Data's per-operator resource reservation; off by default: on small
    machines it keeps read tasks to about one at a time.
    """
    import ray.data

    ctx = ray.data.DataContext.get_current()
    saved = (ctx.execution_options.resource_limits, ctx.op_resource_reservation_enabled)
    if object_store_limit_mb:
        ctx.execution_options.resource_limits = saved[0].copy(object_store_memory=object_store_limit_mb * 2**20)
    ctx.op_resource_reservation_enabled = reserve_op_resources
    try:
        yield ctx
    finally:
        ctx.execution_options.resource_limits, ctx.op_resource_reservation_enabled = saved


def use_gpu(cfg: EncoderConfig, *, section: str = "wsi.encoder") -> bool:
    """Whether encoder actors ask Ray for GPUs (``device: auto`` and the cluster has some, or ``cuda``).

    ``cfg``: any encoder-pool config with ``device`` (the tile and the CT encoder sections alike);
    ``section`` names it in the warning."""
    import ray

    if cfg.device == "cpu":
        return False
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    if cfg.device == "cuda" and not has_gpu:
        log.warning("%s.device is 'cuda' but the Ray cluster has no GPU now: the encoder actors wait until the "
                    "autoscaler adds a GPU node", section)
    return cfg.device == "cuda" or has_gpu


def pool_size(cfg: EncoderConfig, *, gpu: bool) -> int:
    """Encoder actors: ``cfg.pool_size``, else one per GPU of the cluster, else (CPU only) as many as
    fill half the cluster's CPUs, leaving the other half to the read tasks."""
    import ray

    if cfg.pool_size:
        return cfg.pool_size
    res = ray.cluster_resources()
    if gpu:
        return max(1, int(res.get("GPU", 0) / cfg.num_gpus_per_actor))
    return max(1, int(res.get("CPU", 1) / 2 / max(cfg.num_cpus_per_actor, 0.25)))


def embedding_dataset(slides: list[dict], *, spec: TilingSpec, read: ReadConfig, source: Source,
                      encoder: EncoderSpec, cfg: EncoderConfig, limits: PlanLimits = PlanLimits(), progress=None,
                      read_resources: dict[str, float] | None = None,
                      encoder_resources: dict[str, float] | None = None, stain: dict | None = None,
                      probe_tiles: int = 0):
    """:func:`tile_dataset` followed by the encoder actor pool (lazy ``ray.data.Dataset``).

    ``encoder_resources``: custom Ray resources per encoder actor (e.g. ``{"wsi_gpu": 0.25}``).
    ``progress``: a :class:`mmray.features.tile_progress.ProgressHandle`; planning tasks and the encoder
    actors report to it. ``stain``: ``{method, reference, io, beta}`` when the slides carry a ``stain``
    (:mod:`mmray.ingest.wsi_stain`): the encoder actors normalise on their device, and embed
    ``probe_tiles`` tiles per slide also as read (column ``embedding_raw``).
    """
    import ray.data

    gpu = use_gpu(cfg)
    ds = tile_dataset(slides, spec=spec, read=read, source=source, limits=limits, progress=progress,
                      resources=read_resources, probe_tiles=probe_tiles if stain else 0)
    kwargs = {"spec": encoder, "device": "cuda" if gpu else "cpu", "precision": cfg.precision,
              "channels_last": cfg.channels_last,
              "cpu_threads": cfg.cpu_threads or max(1, int(round(cfg.num_cpus_per_actor))), "progress": progress,
              "stain": stain}
    return ds.map_batches(TileEncoder, fn_constructor_kwargs=kwargs, batch_size=cfg.batch_size,
                          batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=pool_size(cfg, gpu=gpu)),
                          num_gpus=cfg.num_gpus_per_actor if gpu else 0, num_cpus=cfg.num_cpus_per_actor,
                          resources=encoder_resources or None)
