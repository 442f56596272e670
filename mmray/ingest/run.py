"""``mmray ingest``: run every modality of a cohort into the feature store.

Each modality has an *ingester*: a module-level function
``ingest(ctx: IngestContext) -> ModalityReport`` plus a frozen config
dataclass (``CONFIG``) for its section of the ingest YAML.  The registry below
names them by import path, so a modality's heavy imports (OpenSlide, torch,
pyradiomics) happen only when it runs.

Every section of the config is validated before anything runs, and all
problems are reported together.  One bad slide or study never stops the job:
ingesters put it in their report's failures; this module writes them to the
store's failures table and the exit status says how many failed.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mmray.cohort import Cohort, load_cohort
from mmray.config import build
from mmray.errors import ConfigError, UnknownNameError
from mmray.ingest.report import ModalityReport
from mmray.store import FeatureStore

log = logging.getLogger(__name__)

# modality -> "module:function"; the module also defines CONFIG (a dataclass).
# Tables first: they carry the patients and labels every other modality joins to.
INGESTERS: dict[str, str] = {
    "clinical": "mmray.ingest.tables:ingest_clinical",
    "expression": "mmray.ingest.tables:ingest_expression",
    "mutations": "mmray.ingest.tables:ingest_mutations",
    "cnv": "mmray.ingest.tables:ingest_cnv",
    "proteins": "mmray.ingest.tables_proteins:ingest_proteins",
    "knowledge": "mmray.ingest.knowledge:ingest_knowledge",
    "wsi": "mmray.ingest.wsi:ingest_wsi",
    "ct": "mmray.ingest.ct:ingest_ct",
    "ct_deep": "mmray.ingest.ct_deep:ingest_ct_deep",
}
# Modalities whose ingesters use Ray (tasks, actor pools); the table ingesters run in-process.
RAY_MODALITIES = ("wsi", "ct", "ct_deep")
# Which section of the ingest YAML configures each modality.
CONFIG_SECTION = {"clinical": "tables", "expression": "tables", "mutations": "tables", "cnv": "tables",
                  "proteins": "tables", "knowledge": "tables", "wsi": "wsi", "ct": "ct", "ct_deep": "ct"}
# Ingesters that read another modality's manifest rows (ct_deep: the ct studies).
SOURCE_MODALITY = {"ct_deep": "ct"}
# Ingesters that run with `modalities: []` (every modality) only when their config says `enabled`.
OPT_IN = {"ct_deep": lambda config: config.deep.enabled}


@dataclass(frozen=True)
class IngestConfig:
    """The ingest job: which cohort into which store, and per-modality settings."""

    cohort: str
    store: str
    modalities: tuple[str, ...] = ()  # empty: every modality the cohort has
    force: bool = False  # recompute what the store already holds
    tables: dict[str, Any] = field(default_factory=dict)
    wsi: dict[str, Any] = field(default_factory=dict)
    ct: dict[str, Any] = field(default_factory=dict)

    def validate(self):
        for m in self.modalities:
            if m not in INGESTERS:
                yield ("modalities", f"unknown modality {m!r}; valid: {', '.join(INGESTERS)}")


@dataclass
class IngestContext:
    """What an ingester gets: the cohort, the store, its own config, and shared helpers."""

    cohort: Cohort
    store: FeatureStore
    config: Any  # the modality's CONFIG dataclass instance
    force: bool = False
    # Maps a source patient id to the id written to the store (a keyed pseudonym
    # when pseudonymisation is configured; identity otherwise).
    patient_key: Callable[[str], str] = staticmethod(lambda pid: pid)


def _resolve(modality: str) -> tuple[Callable[[IngestContext], ModalityReport], type]:
    if modality not in INGESTERS:
        raise UnknownNameError("modality", modality, list(INGESTERS))
    module_name, func_name = INGESTERS[modality].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            raise ConfigError([("modalities", f"modality {modality!r} has no ingester in this build "
                                              f"({module_name} is missing)")]) from e
        raise
    return getattr(module, func_name), module.CONFIG


def plan(cfg: IngestConfig, cohort: Cohort) -> list[tuple[str, Callable, Any]]:
    """Resolve and validate every requested modality's config before anything runs."""
    present = cohort.modalities()
    explicit = bool(cfg.modalities)
    wanted = list(cfg.modalities) or [m for m in INGESTERS if SOURCE_MODALITY.get(m, m) in present]
    problems: list[tuple[str, str]] = []
    steps, bad_sections = [], set()
    for m in wanted:
        source = SOURCE_MODALITY.get(m, m)
        if source not in present:
            problems.append(("modalities", f"{m!r} requested but the cohort has no {source} data "
                                           f"(it has: {', '.join(present) or 'nothing'})"))
            continue
        fn, config_cls = _resolve(m)
        section = CONFIG_SECTION[m]
        try:
            config = build(config_cls, getattr(cfg, section))
        except ConfigError as e:
            if section not in bad_sections:  # a section two modalities share (ct, ct_deep) is reported once
                problems += [(f"{section}.{p}" if p else section, msg) for p, msg in e.problems]
            bad_sections.add(section)
            continue
        if explicit or m not in OPT_IN or OPT_IN[m](config):
            steps.append((m, fn, config))
    if problems:
        raise ConfigError(problems)
    return steps


def section_problems(cfg: IngestConfig) -> list[tuple[str, str]]:
    """Problems in the sections the config sets (tables, wsi, ct), found without the cohort.

    ``plan`` checks the same when the job starts; this lets a longer job (the
    pipeline, whose cohort may not exist yet) report them before anything runs.
    """
    problems: list[tuple[str, str]] = []
    for section in dict.fromkeys(CONFIG_SECTION.values()):
        if not getattr(cfg, section):
            continue  # every field has a working default
        modality = next(m for m, s in CONFIG_SECTION.items() if s == section)
        _, config_cls = _resolve(modality)
        try:
            build(config_cls, getattr(cfg, section))
        except ConfigError as e:
            problems += [(f"{section}.{p}" if p else section, msg) for p, msg in e.problems]
    return problems


def needs_ray(cfg: IngestConfig) -> bool:
    """Whether the modalities this job would run need a Ray cluster (tables alone do not)."""
    wanted = cfg.modalities or tuple(load_cohort(cfg.cohort).modalities())
    return any(m in RAY_MODALITIES for m in wanted)


def run_ingest(cfg: IngestConfig, *, patient_key: Callable[[str], str] | None = None,
               progress: Callable[[str], None] = print) -> list[ModalityReport]:
    """Ingest the requested modalities; failures go to the store's failures table."""
    cohort = load_cohort(cfg.cohort)
    store = FeatureStore(cfg.store)
    steps = plan(cfg, cohort)
    if patient_key is None:
        from mmray.ingest.pseudonym import pseudonymiser_from_env

        patient_key = pseudonymiser_from_env()
    reports = []
    for modality, fn, config in steps:
        progress(f"==> ingest {modality}")
        start = time.perf_counter()
        ctx = IngestContext(cohort=cohort, store=store, config=config, force=cfg.force, patient_key=patient_key)
        report = fn(ctx)
        report.seconds = time.perf_counter() - start
        if report.failures:
            store.record_failures(f"ingest-{modality}", report.failures)  # stage names allow no "."
        progress(f"    {report.one_line()}")
        reports.append(report)
    return reports
