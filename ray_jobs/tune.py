"""Tune one model's hyperparameters with Ray Tune (ASHA + Optuna) on the store's folds, as a Ray job.

    ray job submit --working-dir . --runtime-env ray_jobs/runtime_env.yaml -- python ray_jobs/tune.py \
        --config ray_jobs/configs/tune.yaml store=s3://my-store/luad model=attention_fusion search.num_samples=64
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from _entry import connect, parse_args, run  # noqa: E402

from mmray.config import load_config  # noqa: E402


def main() -> int:
    args = parse_args(__doc__)
    from mmray.tune.config import TuneJobConfig
    from mmray.tune.tuner import run_tune

    cfg = load_config(TuneJobConfig, args.config, args.overrides)
    connect(args)
    report = run_tune(cfg)
    print(report.text())
    return report.exit_code


if __name__ == "__main__":
    run(main)
