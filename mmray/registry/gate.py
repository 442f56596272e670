"""The registration gate: does a cross-validated metric pass its threshold?"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mmray.registry.config import GateConfig


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reason: str  # always filled: why it passed or why not, with the numbers
    metric: str
    value: float | None


def check_gate(metrics: dict[str, float], cfg: GateConfig) -> GateResult:
    """Apply ``cfg`` to ``metrics`` (name -> value); a missing or NaN metric fails."""
    value = metrics.get(cfg.metric)
    if value is None or not math.isfinite(float(value)):
        have = ", ".join(sorted(k for k, v in metrics.items() if v is not None)) or "none"
        return GateResult(False, f"metric {cfg.metric!r} missing or not finite (metrics: {have}); "
                                 f"set registry.gate.metric to one of them", cfg.metric, None)
    value = float(value)
    ok = value >= cfg.threshold if cfg.higher_is_better else value <= cfg.threshold
    op = (">=" if ok else "<") if cfg.higher_is_better else ("<=" if ok else ">")
    reason = f"{cfg.metric} {value:.3f} {op} {cfg.threshold:g}"
    if not ok:
        return GateResult(False, reason, cfg.metric, value)
    if cfg.require_ci_low is not None:
        low = metrics.get(cfg.ci_metric)
        if low is None or not math.isfinite(float(low)):
            return GateResult(False, f"{reason}, but {cfg.ci_metric} is missing (bootstrap off? set "
                                     f"n_boot > 0 or registry.gate.require_ci_low=null)", cfg.metric, value)
        if float(low) < cfg.require_ci_low:
            return GateResult(False, f"{reason}, but {cfg.ci_metric} {float(low):.3f} < "
                                     f"{cfg.require_ci_low:g}", cfg.metric, value)
        reason += f" and {cfg.ci_metric} {float(low):.3f} >= {cfg.require_ci_low:g}"
    return GateResult(True, reason, cfg.metric, value)
