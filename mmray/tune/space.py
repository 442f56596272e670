"""Search spaces: YAML entries and the registry's suggested ranges -> Ray Tune distributions.

Non-scalar choices (e.g. ``hidden: [[32], [64, 32]]``) are searched as their
JSON strings (Optuna's categorical distribution takes scalars only) and
decoded in the trial by :func:`decode`.  Torch models also search the
optimiser settings named in ``search.train_params`` (``lr``,
``weight_decay``, ``batch_size``), read back with :func:`split_params`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mmray.errors import ConfigError
from mmray.models.registry import TRAIN_DEFAULTS, get_spec
from mmray.tune.config import SpaceParam, TuneJobConfig

ENC = "json:"  # prefix of an encoded non-scalar choice


def _encode(v: Any) -> Any:
    if isinstance(v, (list, tuple, dict)):
        return ENC + json.dumps(list(v) if isinstance(v, tuple) else v)
    return v


def decode(config: Mapping[str, Any]) -> dict[str, Any]:
    """Trial config with JSON-encoded choices turned back into lists (tuples for hidden sizes)."""
    out = {}
    for k, v in config.items():
        if isinstance(v, str) and v.startswith(ENC):
            v = json.loads(v[len(ENC):])
            v = tuple(v) if isinstance(v, list) else v
        out[k] = v
    return out


def _from_hparam(hp) -> SpaceParam | None:
    if hp.kind in ("float", "int"):
        return SpaceParam(kind=hp.kind, low=hp.low, high=hp.high, log=hp.log)
    if hp.kind == "choice":
        return SpaceParam(kind="choice", choices=tuple(hp.choices))
    return None


def resolved_space(cfg: TuneJobConfig) -> dict[str, SpaceParam]:
    """The model's search space: its YAML entry, plus describe()'s ranges for the rest (``extend_defaults``)."""
    spec = get_spec(cfg.model)
    given = dict(cfg.spaces.get(cfg.model, {}))
    known = set(spec.hparams) | (set(TRAIN_DEFAULTS) if spec.framework == "torch" else set())
    unknown = sorted(set(given) - known)
    if unknown:
        valid = ", ".join(sorted(known))
        raise ConfigError([(f"spaces.{cfg.model}.{k}", f"not a hyperparameter of {cfg.model}; valid: {valid}")
                           for k in unknown])
    space: dict[str, SpaceParam] = {}
    if cfg.search.extend_defaults:
        for k, hp in spec.hparams.items():
            p = _from_hparam(hp)
            if p is not None:
                space[k] = p
        if spec.framework == "torch":
            for k in cfg.search.train_params:
                p = _from_hparam(TRAIN_DEFAULTS[k])
                if p is not None:
                    space[k] = p
    space.update(given)
    for k in cfg.fixed:
        space.pop(k, None)
    return space


def to_tune(space: Mapping[str, SpaceParam]) -> dict[str, Any]:
    """Ray Tune's ``param_space`` for :func:`resolved_space`."""
    from ray import tune

    out: dict[str, Any] = {}
    for k, p in space.items():
        if p.kind == "choice":
            out[k] = tune.choice([_encode(c) for c in p.choices])
        elif p.kind == "int":
            lo, hi = int(p.low), int(p.high)
            out[k] = tune.lograndint(lo, hi + 1) if p.log else tune.randint(lo, hi + 1)
        else:
            out[k] = tune.loguniform(p.low, p.high) if p.log else tune.uniform(p.low, p.high)
    return out


def split_params(config: Mapping[str, Any], *, model: str, fixed: Mapping[str, Any]) -> tuple[dict, dict]:
    """``(model hyperparameters, optimiser settings)`` of a decoded trial config plus the fixed values."""
    spec = get_spec(model)
    merged = {**dict(fixed), **decode(config)}
    hp = {k: v for k, v in merged.items() if k in spec.hparams or k in spec.extra}
    train = {k: v for k, v in merged.items() if k in TRAIN_DEFAULTS}
    if "hidden" in hp and isinstance(hp["hidden"], list):
        hp["hidden"] = tuple(hp["hidden"])
    return hp, train
