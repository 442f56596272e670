"""Deploy the multiplexed model server (Ray Serve) on the cluster, as a Ray job.

    ray job submit --working-dir . --runtime-env ray_jobs/runtime_env.yaml -- python ray_jobs/serve.py \
        --config ray_jobs/configs/serve.yaml host=0.0.0.0 port=8000

The host must be a loopback address unless a token is set: MMRAY_SERVE_TOKEN in the
head node's environment or `token_file=PATH` (a file on the head); never `token=` here,
which the job table (and the dashboard) would record.

The application outlives the job (Serve applications are detached); `serve
shutdown` or `serve delete mmray` stops it. Run locally (no cluster), the
script keeps the embedded Ray and the server up until Ctrl-C.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from _entry import connect, parse_args, run  # noqa: E402

from mmray.config import load_config  # noqa: E402


def main() -> int:
    args = parse_args(__doc__)
    from mmray.serve.app import run_serve
    from mmray.serve.auth import refuse_secret_overrides
    from mmray.serve.config import ServeConfig, check_bind

    refuse_secret_overrides(args.overrides)  # the dashboard shows a job's entrypoint
    cfg = load_config(ServeConfig, args.config, args.overrides)
    check_bind(cfg)
    return run_serve(cfg, local=connect(args) is None)


if __name__ == "__main__":
    run(main)
