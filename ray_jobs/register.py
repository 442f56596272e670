"""Gate and register a tuned model (mmray tune's refitted best) for serving, as a Ray job.

    ray job submit --working-dir . --runtime-env ray_jobs/runtime_env.yaml -- python ray_jobs/register.py \
        --config ray_jobs/configs/register.yaml store=s3://bucket/store tune_run=tune-heec-20260101T000000
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from _entry import parse_args, run  # noqa: E402

from mmray.config import load_config  # noqa: E402


def main() -> int:
    args = parse_args(__doc__)
    from mmray.registry.trained import RegisterConfig, exit_code, outcome_text, run_register

    outcome = run_register(load_config(RegisterConfig, args.config, args.overrides))
    print(outcome_text(outcome))
    return exit_code(outcome)


if __name__ == "__main__":
    run(main)
