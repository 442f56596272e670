"""Table modalities of ``mmray ingest``: clinical, expression, mutations, cnv.

``CONFIG`` is the dataclass of the ``tables:`` section of the ingest YAML
(:mod:`mmray.ingest.tables_config`); the four ingesters each take an
:class:`~mmray.ingest.run.IngestContext` and return a
:class:`~mmray.ingest.report.ModalityReport`:

* :func:`ingest_clinical` -> groups ``clinical`` and ``labels``, plus the
  leakage and bias reports under ``<store>/_reports/``
  (:mod:`mmray.ingest.tables_clinical`);
* :func:`ingest_expression`, :func:`ingest_mutations`, :func:`ingest_cnv` ->
  groups ``expression``, ``mutations``, ``cnv``
  (:mod:`mmray.ingest.tables_omics`).

Every patient id written, failures included, goes through
``ctx.patient_key`` (the keyed pseudonym when one is configured).  See
docs/tables.md.
"""

from mmray.ingest.tables_clinical import ingest_clinical
from mmray.ingest.tables_config import TablesConfig
from mmray.ingest.tables_omics import ingest_cnv, ingest_expression, ingest_mutations

CONFIG = TablesConfig

__all__ = ["CONFIG", "TablesConfig", "ingest_clinical", "ingest_cnv", "ingest_expression", "ingest_mutations"]
