"""Lineage of a model: what data, folds, config and code it came from; model names.

Every run and every registered version carries these as ``mmray.*`` tags, so
``mlflow`` alone answers "which expression version, which folds, which commit
made the champion of ``sig__SIG_PROLIFERATION``?".

Registered model names: ``<prefix><signature>`` (prefix ``sig__`` by default)
with every character outside ``A-Z a-z 0-9 _ . -`` replaced by ``_``; names
longer than 200 characters are cut and end in ``_<8 hex of sha256>``. The
all-genes model is the pseudo-signature ``ALL_GENES`` (``sig__ALL_GENES``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

TAG = "mmray."
MAX_NAME = 200
_BAD = re.compile(r"[^A-Za-z0-9_.\-]")


def model_name(signature: str, *, prefix: str = "sig__") -> str:
    """The registered model name of a signature (see the module docstring)."""
    name = prefix + _BAD.sub("_", signature.strip())
    if len(name) > MAX_NAME:
        digest = hashlib.sha256(signature.encode()).hexdigest()[:8]
        name = name[:MAX_NAME - 9] + "_" + digest
    return name


def genes_hash(genes) -> str:
    return hashlib.sha256("\n".join(genes).encode()).hexdigest()[:16]


def data_key(*, feature_versions: dict[str, str], folds: str, folds_hash: str, store: str) -> str:
    """Hash of the data a model saw: feature-group versions, folds, store location."""
    blob = json.dumps({"features": feature_versions, "folds": folds, "folds_hash": folds_hash, "store": store},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _short_list(items, *, limit: int = 7000) -> str:
    """Comma-joined, cut to fit an MLflow run tag (8000 characters)."""
    text = ",".join(items)
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(",", 1)[0]
    shown = cut.count(",") + 1
    return f"{cut},...(+{len(items) - shown} more; full list in the model version tag mmray.features)"


@dataclass(frozen=True)
class Lineage:
    """Where one signature model came from.

    ``feature_versions``: group -> version used (labels, expression);
    ``folds``: ``folds@vNNNN`` (the store group) and ``folds_hash`` (of the
    patient -> fold assignment); ``data_key`` hashes both, and with
    ``config_hash`` and ``genes_hash`` decides whether a finished run can be
    reused (resume).
    """

    signature: str
    genes_in_set: tuple[str, ...]
    genes_found: tuple[str, ...]
    feature_versions: dict[str, str]
    folds: str
    folds_hash: str
    config_hash: str
    git_revision: str | None
    store: str
    mmray_version: str
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def data_key(self) -> str:
        return data_key(feature_versions=self.feature_versions, folds=self.folds, folds_hash=self.folds_hash,
                        store=self.store)

    @property
    def genes_hash(self) -> str:
        return genes_hash(self.genes_in_set)

    def model_tags(self) -> dict[str, str]:
        """Tags of the registered model (set when it is created)."""
        return {TAG + "signature": self.signature}

    def model_description(self) -> str:
        return f"mmray survival model on gene signature {self.signature}"

    def run_tags(self) -> dict[str, str]:
        """Tags of the MLflow run (values fit MLflow's 8000-character run tag limit)."""
        missing = [g for g in self.genes_in_set if g not in set(self.genes_found)]
        tags = {
            "signature": self.signature,
            "signature.genes": _short_list(self.genes_found),
            "signature.genes_missing": _short_list(missing),
            "signature.n_genes_in_set": str(len(self.genes_in_set)),
            "signature.n_genes_found": str(len(self.genes_found)),
            "genes_hash": self.genes_hash,
            "feature_versions": json.dumps(self.feature_versions, sort_keys=True),
            "folds": self.folds,
            "folds_hash": self.folds_hash,
            "config_hash": self.config_hash,
            "data_key": self.data_key,
            "git_revision": self.git_revision or "unknown",
            "store": self.store,
            "mmray_version": self.mmray_version,
            **{f"feature_version.{g}": v for g, v in sorted(self.feature_versions.items())},
            **self.extra,
        }
        return {TAG + k: v for k, v in tags.items()}

    def version_tags(self, *, features: list[str], metrics: dict[str, float]) -> dict[str, str]:
        """Tags of a registered model version: the run's plus full feature list and metrics
        (registry tags hold up to 100,000 characters)."""
        tags = self.run_tags()
        tags[TAG + "features"] = json.dumps(list(features))
        tags[TAG + "metrics"] = json.dumps({k: float(v) for k, v in sorted(metrics.items())})
        return tags
