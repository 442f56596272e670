"""Write the self-contained HTML report of a run (mmray.report.build), as a Ray job.

    ray job submit --working-dir . --runtime-env ray_jobs/runtime_env.yaml -- python ray_jobs/report.py \
        --config ray_jobs/configs/report.yaml \
        store=s3://my-store/luad   # the report lands in s3://my-store/luad/_reports/report.html
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from _entry import EXIT_OK, parse_args, run

from mmray.config import load_config


def main() -> int:
    args = parse_args(__doc__)
    from mmray.report.build import ReportConfig, run_report

    cfg = load_config(ReportConfig, args.config, args.overrides)
    print(f"report written to {run_report(cfg)}")  # reads the store's files: no Ray work to start
    return EXIT_OK


if __name__ == "__main__":
    run(main)
