"""Stain normalisation in WSI ingest: the cohort's reference stain and each slide's own stain.

:class:`StainPlan` is made once per ingest run (``wsi.stain.method`` other
than ``none``) before the tile and nuclei pipelines:

* the **reference** is fitted once per cohort, on the pooled tissue pixels of
  a seeded sample of ``reference_slides`` slides; a later run reuses the
  reference stored in the latest ``wsi_tiles`` manifest params (``stain``)
  when the stain settings are the same (``--force`` fits it again), so slides
  added later are normalised to the same target as the ones already embedded;
* a **slide's stain** is fitted from the tissue pixels of ``fit_tiles`` of its
  tissue tiles (the tiles of the embedding grid with the most tissue, read at
  ``fit_mpp``); fitted by Ray tasks, one per slide, only for slides a
  pipeline will read, and kept in the slide's lineage entry (``sources``) of
  every group it was used for.

Both are torchstain fits (:mod:`mmray.features.stain`).  A slide whose stain
cannot be estimated (too little tissue) is normalised with the reference as
its own stain (nearly unchanged), and said so in the run's notes.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np

from mmray.errors import InputError
from mmray.features import stain as stain_mod

log = logging.getLogger(__name__)


def _order(slide_id: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{slide_id}".encode()).digest()[:8], "little")


def slide_sample(slide: dict, *, cfg, source, limits) -> tuple[np.ndarray, np.ndarray | None, str]:
    """``(tissue pixels (M, 3) uint8, stain or None, reason)`` of one slide (``cfg``: the ``wsi`` section)."""
    from mmray.features.tiling import plan_slide, read_plan, read_tile
    from mmray.ingest import slide_resolution

    sc, name = cfg.stain, slide["slide_id"]
    empty = np.zeros((0, 3), np.uint8)
    try:
        handle = source.handle(slide["uri"])
        mpp = slide.get("mpp")
        mpp_l0 = slide_resolution.slide_mpp(handle, name=name, mpp_override=cfg.mpp_override,
                                            manifest_mpp=None if mpp is None or np.isnan(mpp) else float(mpp),
                                            mpp_range=limits.mpp_range)
        tiles, _, _ = plan_slide(handle, mpp_l0=mpp_l0, spec=cfg.tiling(), limits=limits, name=name)
        if len(tiles.tile_x) == 0:
            return empty, None, "no tissue tile"
        rng = np.random.default_rng(_order(name, sc.seed))
        rank = np.lexsort((rng.random(len(tiles.tile_x)), -tiles.tile_tissue))  # most tissue first, ties seeded
        size_l0 = max(1, int(round(sc.fit_px * sc.fit_mpp / mpp_l0)))
        level, read_px = read_plan(handle.level_downsamples, extent_l0=size_l0, out_px=sc.fit_px)
        pix = []
        for i in rank[:sc.fit_tiles]:
            x = int(tiles.tile_x[i]) + (tiles.tile_l0 - size_l0) // 2  # centred on the embedding tile
            y = int(tiles.tile_y[i]) + (tiles.tile_l0 - size_l0) // 2
            pix.append(read_tile(handle, x=max(x, 0), y=max(y, 0), level=level, read_px=read_px, out_px=sc.fit_px))
        px = stain_mod.tissue_pixels(np.stack(pix), beta=sc.beta, io=sc.io)
        if len(px) > sc.max_fit_pixels:
            px = px[np.sort(rng.choice(len(px), sc.max_fit_pixels, replace=False))]
        return px, stain_mod.fit_params(px, method=sc.method, cfg=sc), ""
    except InputError as e:
        return empty, None, str(e).replace(str(slide["uri"]), "the slide file")
    except Exception as e:  # noqa: BLE001  an unreadable slide fails later, in the pipeline, with its reason
        return empty, None, f"{type(e).__name__}: {e}".replace(str(slide["uri"]), "the slide file")


class StainPlan:
    """The reference and per-slide stains of one run (see the module docstring)."""

    def __init__(self, cfg, *, source, limits, previous: dict | None = None, force: bool = False):
        self.cfg, self.sc, self.source, self.limits = cfg, cfg.stain, source, limits
        self.stains: dict[str, np.ndarray] = {}
        self.notes: list[str] = []
        self.reference: np.ndarray | None = None
        self.reference_slides = 0
        prev = (previous or {}).get("stain") or {}
        if not force and prev.get("key") == self.sc.key() and prev.get("reference"):
            self.reference = np.asarray(prev["reference"], np.float32)
            self.reference_slides = int(prev.get("reference_slides", 0))
            log.info("wsi stain: %s reference reused from the store (fitted on %d slides)", self.sc.method,
                     self.reference_slides)

    @property
    def enabled(self) -> bool:
        return self.sc.enabled

    def params(self) -> dict | None:
        """What the manifests' params (and the embed key) hold: settings and the reference."""
        if not self.enabled:
            return None
        return {"key": self.sc.key(), "reference": [round(float(v), 6) for v in self.reference],
                "reference_slides": self.reference_slides}

    def fit_reference(self, slides: list[dict]) -> None:
        """Fit the reference on a seeded sample of ``slides`` unless one is already set."""
        if not self.enabled or self.reference is not None:
            return
        chosen = sorted(slides, key=lambda s: _order(s["slide_id"], self.sc.seed))[:self.sc.reference_slides]
        samples = self._fit(chosen)
        pixels = [px for px in samples.values() if len(px)]
        if not pixels:
            raise InputError(f"wsi.stain: no tissue pixels on any of the {len(chosen)} slides sampled for the "
                             f"{self.sc.method} reference; set wsi.stain.method=none or check the slides")
        per = max(stain_mod.MIN_PIXELS, self.sc.max_fit_pixels // len(pixels))  # every slide weighs the same
        pooled = np.concatenate([px[:per] for px in pixels])
        self.reference = stain_mod.fit_params(pooled, method=self.sc.method, cfg=self.sc)
        self.reference_slides = len(pixels)
        log.info("wsi stain: %s reference fitted on %d slides (%d tissue pixels)", self.sc.method, len(pixels),
                 len(pooled))

    def ensure(self, slides: list[dict]) -> None:
        """Fit the stain of every slide of ``slides`` not fitted yet."""
        if self.enabled:
            self._fit([s for s in slides if s["slide_id"] not in self.stains])

    def attach(self, slides: list[dict]) -> list[dict]:
        """``slides`` with ``stain`` (float32 vector) set; a slide without an estimate gets the reference (so it is
        only projected onto the reference stains, nearly unchanged)."""
        if not self.enabled:
            return slides
        self.ensure(slides)
        return [{**s, "stain": self.stains.get(s["slide_id"], self.reference)} for s in slides]

    def lineage(self, slide_id: str) -> dict:
        """The slide's stain for its entry in a manifest's sources."""
        if not self.enabled or slide_id not in self.stains:
            return {}
        return {"stain": [round(float(v), 6) for v in self.stains[slide_id]]}

    def _fit(self, slides: list[dict]) -> dict[str, np.ndarray]:
        """Fit each slide (Ray tasks when Ray runs); returns the tissue pixel samples by slide id."""
        import ray

        from mmray.progress import RateLog

        if not slides:
            return {}
        kwargs = {"cfg": self.cfg, "source": self.source, "limits": self.limits}
        items = [{k: s.get(k) for k in ("slide_id", "uri", "mpp")} for s in slides]
        progress = RateLog(log, "wsi stain", total=len(items), unit="slides")
        out: dict[str, np.ndarray] = {}
        if ray.is_initialized() and len(items) > 1:
            task = ray.remote(num_cpus=1)(slide_sample)
            pending = {task.remote(it, **kwargs): it["slide_id"] for it in items}
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    progress.tick(failed=not self._keep(pending.pop(ref), ray.get(ref), out))
        else:
            for it in items:
                progress.tick(failed=not self._keep(it["slide_id"], slide_sample(it, **kwargs), out))
        return out

    def _keep(self, slide_id: str, result, out: dict) -> bool:
        px, params, reason = result
        out[slide_id] = px
        if params is not None:
            self.stains[slide_id] = params
            return True
        self.notes.append(f"stain: slide {slide_id} has no stain estimate ({reason}); the reference stands in")
        return False
