"""What may leave a site: the egress check every site answer passes before it is returned.

A site's answers are nested dicts and lists of

* numbers (``int``, ``float``, ``bool``, ``None``, numpy scalars): counts, metrics;
* numeric numpy arrays: per-column statistics (shape ``[d]`` or ``[d, K]``);
* torch tensors: model weights (a ``state_dict``);
* strings: column names, one-hot levels, metric and group names, store
  versions; never one of the site's patient or slide identifiers (checked,
  also as a substring).

Anything else (a DataFrame, a Series, an object array, bytes, an arbitrary
object) is refused with :class:`EgressError` inside the site, so a
programming error cannot send rows to the coordinator.  The check is
structural: it keeps identifiers and tables home; per-patient numeric
vectors are kept home by what the site methods compute (aggregates over
rows), which ``tests/train/test_federated.py`` checks from the coordinator's
side.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from mmray.errors import MmrayError

SCALARS = (int, float, bool, type(None), np.integer, np.floating, np.bool_)


class EgressError(MmrayError):
    """A site answer held something other than weights, statistics and scalars."""


def check_outbound(obj, *, forbidden: Iterable[str] = (), path: str = "answer") -> None:
    """Raise :class:`EgressError` when ``obj`` holds anything a site must not send (module doc)."""
    import torch

    ids = [str(f) for f in forbidden if str(f)]
    _check(obj, ids, path, torch)


def _check(obj, ids: list[str], path: str, torch) -> None:
    if isinstance(obj, SCALARS):
        return
    if isinstance(obj, str):
        for f in ids:
            if f in obj:
                raise EgressError(f"{path}: a string holding a patient/slide identifier would leave the site")
        return
    if isinstance(obj, torch.Tensor):
        if not (obj.is_floating_point() or obj.dtype in (torch.int64, torch.int32, torch.bool)):
            raise EgressError(f"{path}: tensor of dtype {obj.dtype}")
        return
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise EgressError(f"{path}: numpy array of dtype {obj.dtype} (only numeric arrays may leave a site)")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise EgressError(f"{path}: dict key of type {type(k).__name__}")
            _check(k, ids, f"{path}.<key>", torch)
            _check(v, ids, f"{path}.{k}", torch)
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check(v, ids, f"{path}[{i}]", torch)
        return
    raise EgressError(f"{path}: a {type(obj).__module__}.{type(obj).__name__} may not leave a site "
                      f"(only weights, per-column statistics, counts and scalar metrics)")
