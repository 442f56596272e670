"""Ingest a cohort's modalities into the feature store, as a Ray job.

    ray job submit --working-dir . --runtime-env ray_jobs/runtime_env.yaml -- python ray_jobs/ingest.py \
        --config ray_jobs/configs/ingest.yaml cohort=s3://my-cohorts/luad/cohort.yaml store=s3://my-store/luad
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from _entry import EXIT_OK, EXIT_PARTIAL, connect, parse_args, run  # noqa: E402

from mmray.config import load_config  # noqa: E402


def main() -> int:
    args = parse_args(__doc__)
    from mmray.ingest.report import summarise
    from mmray.ingest.run import IngestConfig, run_ingest

    cfg = load_config(IngestConfig, args.config, args.overrides)
    connect(args)
    reports = run_ingest(cfg)
    print(summarise(reports))
    return EXIT_PARTIAL if any(r.failures for r in reports) else EXIT_OK


if __name__ == "__main__":
    run(main)
