"""``mmray pretrain`` (DINO on the cohort's slides) and ``mmray features import|export`` (TRIDENT/CLAM h5 files)."""

from __future__ import annotations

import argparse


def setup(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain a tile encoder with DINO on the cohort's own slides (Ray Train)",
                       description="DINO self-distillation (HIPT's 256-level recipe) on tissue tiles streamed from "
                                   "the cohort's slides into Ray Train; writes encoder.pt (loadable as "
                                   "wsi.encoder.weights), registers it in MLflow, and optionally embeds the slides "
                                   "with it (embed=true) and trains the 4096 level (region.enabled=true).")
    p.add_argument("--cohort", default=None, help="cohort.yaml (overrides the config's cohort)")
    p.add_argument("--store", default=None, help="feature store (overrides the config's store)")
    p.add_argument("--config", default=None, help="pretrain YAML (see ray_jobs/configs/pretrain.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. backbone=cnn_small dino.epochs=5")
    p.add_argument("--address", default=None, help="Ray cluster address; default: start Ray locally")
    p.set_defaults(func=run_pretrain_cmd)

    f = sub.add_parser("features", help="import or export tile features as TRIDENT/CLAM h5 files")
    fsub = f.add_subparsers(dest="features_command", metavar="ACTION")
    fsub.required = True
    imp = fsub.add_parser("import", help="h5 files (features, coords) keyed to the manifest's slides -> wsi_tiles",
                          description="Read one h5 file per slide (datasets `features` (N, D) and `coords` (N, 2), "
                                      "level-0 pixels; attribute `patch_size_level0`) named after the slide's file "
                                      "or id, into a new version of the tile bag group with ENCODER as the "
                                      "identity; then update the slide and patient aggregates. A slide whose "
                                      "coordinates fall outside it or whose counts disagree fails with the reason.")
    imp.add_argument("folder", metavar="DIR", help="folder of .h5 files (local or s3://)")
    imp.add_argument("--format", choices=["trident", "clam"], required=True)
    imp.add_argument("--store", required=True)
    imp.add_argument("--cohort", required=True, help="cohort.yaml whose manifest names the slides")
    imp.add_argument("--encoder", required=True, help="identity of the features, e.g. uni_v1 or conch@sha256:...")
    imp.add_argument("--group", default="wsi_tiles", help="bag group to write (default wsi_tiles)")
    imp.add_argument("--no-aggregates", action="store_true", help="do not update wsi_slide / wsi_patient")
    imp.set_defaults(func=run_import)
    exp = fsub.add_parser("export", help="the store's tile bags -> one CLAM-layout h5 file per slide")
    exp.add_argument("folder", metavar="DIR", help="output folder (created)")
    exp.add_argument("--format", choices=["clam", "trident"], default="clam")
    exp.add_argument("--store", required=True)
    exp.add_argument("--group", default="wsi_tiles", help="bag group to read (default wsi_tiles)")
    exp.add_argument("--version", default=None, help="group version (default latest)")
    exp.set_defaults(func=run_export)


def run_pretrain_cmd(args: argparse.Namespace) -> int:
    from mmray.cli import init_ray
    from mmray.config import load_config
    from mmray.train.pretrain.config import PretrainConfig
    from mmray.train.pretrain.job import run_pretrain

    overrides = [f"{k}={getattr(args, k)}" for k in ("cohort", "store") if getattr(args, k)] + list(args.overrides)
    cfg = load_config(PretrainConfig, args.config, overrides)
    init_ray(args.address)
    report = run_pretrain(cfg)
    print(report.text())
    return report.exit_code


def run_import(args: argparse.Namespace) -> int:
    from mmray.cli import EXIT_OK, EXIT_PARTIAL
    from mmray.features.feature_io import import_features

    result = import_features(args.folder, store=args.store, cohort=args.cohort, fmt=args.format,
                             encoder=args.encoder, group=args.group, aggregates=not args.no_aggregates)
    print(result.text())
    return EXIT_PARTIAL if result.failures else EXIT_OK


def run_export(args: argparse.Namespace) -> int:
    from mmray.cli import EXIT_OK
    from mmray.features.feature_io import export_features

    files = export_features(args.folder, store=args.store, group=args.group, version=args.version, fmt=args.format)
    print(f"exported {len(files)} slide(s) to {args.folder}")
    return EXIT_OK
