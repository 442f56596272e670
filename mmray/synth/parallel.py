"""Run one function over many items, locally or as Ray tasks, with progress."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from tqdm.auto import tqdm

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
    if not use_ray:
        return [fn(x) for x in tqdm(items, desc=desc, unit="item", leave=False)]

    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=None, include_dashboard=False, log_to_driver=False)
    remote = ray.remote(num_cpus=1)(fn)
    refs = [remote.remote(x) for x in items]
    index = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    pending = list(refs)
    with tqdm(total=len(refs), desc=desc, unit="item", leave=False) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                results[index[ref]] = ray.get(ref)
                bar.update(1)
    return results
