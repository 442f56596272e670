"""Classical survival fits (``coxnet``, ``coxph_ridge``, ``rsf``, ``gbsa``, ``ensemble``) as parallel Ray tasks.

Each (task, model, modality set, repeat, fold) is one small single-process
fit (seconds), so the CV runner sends them all at once as Ray tasks, one
CPU each, over folds, repeats and modality sets; the training table goes
through the object store once.  Without a running Ray (unit tests, a
debugger) the same function fits them in order in the driver.  A fit that
raises comes back as its exception; the runner records it and goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd

from mmray.models.survival_classic import CLASSIC_FAMILIES
from mmray.train.fold_fit import FoldOutcome, FoldSettings, fold_rows
from mmray.train.preprocess import ModalityLayout

log = logging.getLogger("mmray.train")
CLASSIC_MODELS = frozenset(CLASSIC_FAMILIES) | {"ensemble"}


@dataclass(frozen=True)
class ClassicJob:
    task: str
    model: str
    set_name: str
    modalities: tuple[str, ...]
    hparams: dict
    repeat: int
    fold: int


def fit_one(job: ClassicJob, table: pd.DataFrame, folds: pd.DataFrame, settings: FoldSettings,
            layout: ModalityLayout | None = None) -> FoldOutcome:
    """One job on its fold of ``table`` (``folds``: that repeat's saved folds)."""
    from mmray.train.ensemble import fit_fold_ensemble
    from mmray.train.fold_classic import fit_fold_classic

    rows = fold_rows(table, folds, fold=job.fold, val_fraction=settings.val_fraction,
                     seed=settings.seed + 101 * job.repeat)
    seeded = FoldSettings(**{**settings.__dict__, "seed": settings.seed + 101 * job.repeat})
    if job.model == "ensemble":
        return fit_fold_ensemble(hparams=job.hparams, task=job.task, modalities=job.modalities, rows=rows,
                                 fold=job.fold, settings=seeded, layout=layout)
    return fit_fold_classic(model=job.model, hparams=job.hparams, task=job.task, modalities=job.modalities,
                            rows=rows, fold=job.fold, settings=seeded, layout=layout)


def _timed(job, table, folds, settings, layout):
    t0 = time.perf_counter()
    try:
        out = fit_one(job, table, folds, settings, layout)
    except Exception as e:  # noqa: BLE001  returned to the driver, recorded as a failed fit
        out = e
    return out, time.perf_counter() - t0


def run_classic_jobs(jobs: Sequence[ClassicJob], *, tables: dict[str, pd.DataFrame], folds: Sequence[pd.DataFrame],
                     settings: FoldSettings, layout: ModalityLayout | None = None,
                     on_done: Callable[[ClassicJob, object, float], None]) -> None:
    """Fit every job (Ray tasks when Ray is up), calling ``on_done(job, outcome or exception, seconds)``.

    ``tables``: task -> rows usable for it; ``folds[r]``: repeat ``r``'s folds.
    Progress (done/total, fits per minute, ETA) is logged as results come in.
    """
    import ray

    if not jobs:
        return
    t0 = time.perf_counter()

    def progress(k: int, job: ClassicJob, out, seconds: float) -> None:
        rate = k / max(time.perf_counter() - t0, 1e-9)
        head = getattr(out, "metrics", {}).get("harrell_c", float("nan")) if not isinstance(out, Exception) else None
        log.info("classic [%d/%d] %s %-12s %-14s repeat %d fold %d: %s (%.1f s; %.1f fits/min, ETA %.0f s)", k,
                 len(jobs), job.task, job.model, job.set_name, job.repeat, job.fold,
                 f"harrell_c={head:.3f}" if head is not None else f"FAILED {out}", seconds, 60 * rate,
                 (len(jobs) - k) / max(rate, 1e-9))
        on_done(job, out, seconds)

    if not ray.is_initialized():
        for k, job in enumerate(jobs, 1):
            out, sec = _timed(job, tables[job.task], folds[job.repeat], settings, layout)
            progress(k, job, out, sec)
        return
    remote = ray.remote(num_cpus=1, max_retries=1)(_timed)
    table_refs = {t: ray.put(v) for t, v in tables.items()}
    fold_refs = [ray.put(f) for f in folds]
    pending = {remote.remote(j, table_refs[j.task], fold_refs[j.repeat], settings, layout): j for j in jobs}
    k = 0
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        job = pending.pop(done[0])
        try:
            out, sec = ray.get(done[0])
        except Exception as e:  # noqa: BLE001  a worker that died twice: recorded like a failed fit
            out, sec = e, 0.0
        k += 1
        progress(k, job, out, sec)
