"""Train, gate and register one survival model per gene signature, as a Ray job.

    ray job submit --working-dir . --runtime-env ray_jobs/runtime_env.yaml -- python ray_jobs/signatures.py \
        --config ray_jobs/configs/signatures.yaml cohort=s3://bucket/cohort/cohort.yaml store=s3://bucket/store
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from _entry import connect, parse_args, run  # noqa: E402

from mmray.config import load_config  # noqa: E402


def main() -> int:
    args = parse_args(__doc__)
    from mmray.registry.signatures import SignaturesConfig, run_signatures

    cfg = load_config(SignaturesConfig, args.config, args.overrides)
    connect(args)
    report = run_signatures(cfg)
    print(report.table())
    return report.exit_code


if __name__ == "__main__":
    run(main)
