"""Run one function over many items, locally or as Ray tasks, with rate/ETA progress lines."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from mmray.progress import RateLog

log = logging.getLogger(__name__)


def parallel_map(fn: Callable[[Any], Any], items: Iterable[Any], *, use_ray: bool, desc: str) -> list[Any]:
    """``[fn(x) for x in items]`` in order; fans out over Ray tasks when ``use_ray``.

    ``fn`` must be a module-level function (Ray pickles it by reference).
    With Ray, results are collected as they finish so progress stays live,
    then returned in input order.
    """
    items = list(items)
    if not items:
        return []
    progress = RateLog(log, "synth", len(items), unit=desc, interval_s=15.0)
    if not use_ray:
        results = []
        for x in items:
            results.append(fn(x))
            progress.tick()
        return results

    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=None, include_dashboard=False, log_to_driver=False)
    remote = ray.remote(num_cpus=1)(fn)
    refs = [remote.remote(x) for x in items]
    index = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            results[index[ref]] = ray.get(ref)
            progress.tick()
    return results
