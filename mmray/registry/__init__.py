"""MLflow-backed model registry: gated registration, lineage, champion alias, signature fan-out.

Modules: :mod:`.config` (where MLflow is, the gate, the alias), :mod:`.gate`,
:mod:`.lineage` (tags and model names), :mod:`.pyfunc` (the pyfunc wrapper),
:mod:`.registry` (:class:`Registry`), :mod:`.signatures` (``mmray signatures``),
:mod:`.trained` (``mmray register``: a tuned model, read by :mod:`.tune_run` and
wrapped by :mod:`.tuned_model`).
Importing this package does not import MLflow.
"""

from mmray.registry.config import GateConfig, RegistryConfig
from mmray.registry.gate import GateResult, check_gate
from mmray.registry.lineage import Lineage, model_name

__all__ = ["GateConfig", "GateResult", "Lineage", "RegistryConfig", "check_gate", "model_name"]
