"""Pretrain a tile encoder with DINO on the cohort's own slides (and, optionally, the 4096 level), as a Ray job.

    ray job submit --working-dir . --runtime-env ray_jobs/runtime_env.yaml -- python ray_jobs/pretrain.py \
        --config ray_jobs/configs/pretrain.yaml cohort=s3://my-cohorts/luad/cohort.yaml store=s3://my-store/luad
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from _entry import connect, parse_args, run  # noqa: E402

from mmray.config import load_config  # noqa: E402


def main() -> int:
    args = parse_args(__doc__)
    from mmray.train.pretrain.config import PretrainConfig
    from mmray.train.pretrain.job import run_pretrain

    cfg = load_config(PretrainConfig, args.config, args.overrides)
    connect(args)
    report = run_pretrain(cfg)
    print(report.text())
    return report.exit_code


if __name__ == "__main__":
    run(main)
