"""``mmray explain``: why a registered model gives these patients their risk (see :mod:`mmray.report.explain`)."""

from __future__ import annotations

import argparse
import json
import sys


def setup(sub) -> None:
    p = sub.add_parser("explain", help="per-patient explanation of a registered model's prediction",
                       description="Predicted risk and survival curve of each patient (features from the store), "
                                   "each present modality's contribution and the top features and genes with their "
                                   "direction (masking attribution), and the slide locations behind them.")
    p.add_argument("--store", required=True, help="feature store (local path or s3://) holding the patients")
    p.add_argument("--model", required=True, help="registered model name, e.g. sig__SIG_PROLIFERATION")
    p.add_argument("--version", default=None, help="model version (default: the serving alias, champion)")
    p.add_argument("--top-k", type=int, default=10, help="features and genes listed per patient (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("patients", nargs="+", metavar="PATIENT", help="patient ids (raw, or the store's pseudonyms)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmray.cli import EXIT_OK, EXIT_PARTIAL
    from mmray.report.explain_job import explain_patients, explanation_text

    if args.top_k < 1:
        print("mmray explain: error: --top-k must be >= 1", file=sys.stderr)
        return 2
    result = explain_patients(args.store, args.model, args.patients, version=args.version, top_k=args.top_k)
    text = json.dumps(result, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text if args.json else explanation_text(result))
    if result["unknown"]:
        print(f"mmray explain: {len(result['unknown'])} of {len(args.patients)} patient(s) not in the store",
              file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK
