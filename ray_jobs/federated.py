"""Federated training across sites (FedAvg / FedProx), as a Ray job.

    ray job submit --working-dir . --runtime-env ray_jobs/runtime_env.yaml -- python ray_jobs/federated.py \
        --config ray_jobs/configs/federated.yaml store=s3://coordinator/fed sites.a.store=s3://hospital-a/store
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from _entry import connect, parse_args, run  # noqa: E402

from mmray.config import load_config  # noqa: E402


def main() -> int:
    args = parse_args(__doc__)
    from mmray.train.federated import run_federated
    from mmray.train.federated_config import FederatedConfig

    cfg = load_config(FederatedConfig, args.config, args.overrides)
    connect(args)
    report = run_federated(cfg)
    print(report.text())
    return report.exit_code


if __name__ == "__main__":
    run(main)
