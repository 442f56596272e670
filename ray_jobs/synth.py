"""Write a synthetic cohort as a Ray job.

    ray job submit --working-dir . --runtime-env ray_jobs/runtime_env.yaml -- python ray_jobs/synth.py \
        --config ray_jobs/configs/synth.yaml out=/tmp/c
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from _entry import EXIT_OK, connect, parse_args, run  # noqa: E402

from mmray.config import load_config  # noqa: E402


def main() -> int:
    args = parse_args(__doc__)
    from mmray.synth.job import SynthJobConfig, run_synth_job

    cfg = load_config(SynthJobConfig, args.config, args.overrides)
    connect(args)
    print(run_synth_job(cfg).summary())
    return EXIT_OK


if __name__ == "__main__":
    run(main)
