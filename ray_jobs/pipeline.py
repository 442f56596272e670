"""Run the stages in order from one YAML, each skipping what the store already holds, as a Ray job.

    ray job submit --working-dir . --runtime-env ray_jobs/runtime_env.yaml -- python ray_jobs/pipeline.py \
        --config ray_jobs/configs/pipeline.yaml cohort=s3://my-cohorts/luad/cohort.yaml store=s3://my-store/luad
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from _entry import connect, parse_args, run  # noqa: E402

from mmray.config import load_config  # noqa: E402


def main() -> int:
    args = parse_args(__doc__)
    from mmray.pipeline import PipelineConfig, run_pipeline
    from mmray.serve.auth import refuse_secret_overrides

    refuse_secret_overrides(args.overrides)  # serve.token=... would be in the job's entrypoint
    cfg = load_config(PipelineConfig, args.config, args.overrides)
    connect(args)
    report = run_pipeline(cfg, progress=lambda line: print(line, flush=True))
    print(report.text())
    return report.exit_code


if __name__ == "__main__":
    run(main)
