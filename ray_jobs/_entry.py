"""Shared plumbing for the thin ``ray_jobs/`` entrypoints.

Each entrypoint: parse ``--config FILE [key=value ...] [--address ADDR]``, build
the frozen config, call one mmray function, return an exit code.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from mmray.errors import MmrayError

EXIT_OK, EXIT_FAILED, EXIT_PARTIAL = 0, 1, 3


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="YAML config (see ray_jobs/configs/)")
    parser.add_argument("--address", default=None, help="Ray address; default: the job's cluster or local")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. seed=3")
    return parser.parse_args()


def connect(args: argparse.Namespace) -> str | None:
    """Start or join Ray: ``--address``, else the job's cluster (``RAY_ADDRESS``), else a local one
    (returns None then)."""
    from mmray.cli import init_ray

    address = args.address or ("auto" if os.environ.get("RAY_ADDRESS") else None)
    init_ray(address)
    return address


def run(main) -> None:
    """Run ``main()`` and exit with its code; config and input errors exit 1 with the message."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code = main()
    except MmrayError as e:
        print(f"error: {e}", file=sys.stderr)
        code = EXIT_FAILED
    sys.exit(code)
