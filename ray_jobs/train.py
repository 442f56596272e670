"""Cross-validate models x modality sets on the store's folds, as a Ray job.

    ray job submit --working-dir . --runtime-env ray_jobs/runtime_env.yaml -- python ray_jobs/train.py \
        --config ray_jobs/configs/train.yaml store=s3://my-store/luad train.workers=2 train.use_gpu=true
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from _entry import connect, parse_args, run  # noqa: E402

from mmray.config import load_config  # noqa: E402


def main() -> int:
    args = parse_args(__doc__)
    from mmray.train.config import TrainJobConfig
    from mmray.train.cv import run_train

    cfg = load_config(TrainJobConfig, args.config, args.overrides)
    connect(args)
    report = run_train(cfg)
    print(report.text())
    return report.exit_code


if __name__ == "__main__":
    run(main)
