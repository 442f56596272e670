"""Deploy the multiplexed model server (Ray Serve) on the cluster, as a Ray job.

    ray job submit --working-dir . --runtime-env ray_jobs/runtime_env.yaml -- python ray_jobs/serve.py \
        --config ray_jobs/configs/serve.yaml host=0.0.0.0 port=8000

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
    from mmray.serve.config import ServeConfig

    cfg = load_config(ServeConfig, args.config, args.overrides)
    return run_serve(cfg, local=connect(args) is None)


if __name__ == "__main__":
    run(main)
