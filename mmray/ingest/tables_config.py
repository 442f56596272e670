"""The ``tables:`` section of the ingest YAML (clinical, expression, mutations, cnv, proteins, knowledge).

Every field has a default that works on a synthetic cohort and on GDC/TCGA
exports; see docs/tables.md for the whole section with its defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mmray.features.clinical import ClinicalConfig
from mmray.features.mutations import IMPACT_LEVELS, NON_SYNONYMOUS
from mmray.report.bias import BiasConfig
from mmray.report.leakage import LeakageConfig

# the value columns of mmray.features.star_counts.VALUE_COLUMNS
StarValue = Literal["unstranded", "stranded_first", "stranded_second", "tpm_unstranded", "fpkm_unstranded",
                    "fpkm_uq_unstranded"]


@dataclass(frozen=True)
class ExpressionConfig:
    duplicate_genes: Literal["sum", "max_variance"] = "sum"
    log2: Literal["auto", "always", "never"] = "auto"
    dtype: Literal["float32", "float64"] = "float32"
    # GDC STAR-counts input (expression.path a folder, a sample sheet or one file)
    sample_sheet: str | None = None  # relative to the cohort folder; default: found in the folder
    star_value: StarValue = "tpm_unstranded"
    star_gene_id: Literal["gene_name", "gene_id"] = "gene_name"
    star_gene_types: tuple[str, ...] = ()  # e.g. [protein_coding]; empty: every gene


@dataclass(frozen=True)
class MutationsConfig:
    rule: Literal["classification", "impact", "auto"] = "classification"
    classes: tuple[str, ...] = NON_SYNONYMOUS
    impact_levels: tuple[str, ...] = IMPACT_LEVELS
    genes: tuple[str, ...] = ()  # fixed gene columns; empty: genes mutated in >= min_samples samples
    min_samples: int = 1

    def validate(self):
        if self.min_samples < 1:
            yield ("min_samples", f"must be at least 1, got {self.min_samples}")


@dataclass(frozen=True)
class CnvConfig:
    min_value: int = -2  # calls outside [min_value, max_value] or not integers: reported, set missing
    max_value: int = 2

    def validate(self):
        if self.min_value > self.max_value:
            yield ("min_value", f"must not exceed max_value ({self.min_value} > {self.max_value})")


@dataclass(frozen=True)
class ProteinsConfig:
    duplicate_proteins: Literal["mean", "max_variance"] = "mean"  # an antibody listed twice
    dtype: Literal["float32", "float64"] = "float32"


@dataclass(frozen=True)
class KnowledgeConfig:
    """Prior knowledge: which interactions to keep (the gene sets are copied as they are)."""

    types: tuple[str, ...] = ()  # edge types to keep, e.g. [ppi, regulates]; empty: every type
    min_score: float = 0.0  # drop scored edges below this confidence (0-1); unscored edges are kept

    def validate(self):
        if not 0.0 <= self.min_score <= 1.0:
            yield ("min_score", f"must be in [0, 1], got {self.min_score}")


@dataclass(frozen=True)
class ReportsConfig:
    leakage: LeakageConfig = field(default_factory=LeakageConfig)
    bias: BiasConfig = field(default_factory=BiasConfig)


@dataclass(frozen=True)
class TablesConfig:
    """``tables:`` in the ingest YAML."""

    clinical: ClinicalConfig = field(default_factory=ClinicalConfig)
    expression: ExpressionConfig = field(default_factory=ExpressionConfig)
    mutations: MutationsConfig = field(default_factory=MutationsConfig)
    cnv: CnvConfig = field(default_factory=CnvConfig)
    proteins: ProteinsConfig = field(default_factory=ProteinsConfig)
    knowledge: KnowledgeConfig = field(default_factory=KnowledgeConfig)
    reports: ReportsConfig = field(default_factory=ReportsConfig)
    tumour_only: bool = False  # leave out normal/control samples even for patients without a tumour sample
