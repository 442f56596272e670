"""``mmray federated``: federated training across sites, each with its own store (see :mod:`mmray.train.federated`)."""

from __future__ import annotations

import argparse


def setup(sub) -> None:
    p = sub.add_parser("federated", help="federated training across sites (FedAvg / FedProx), rows stay at each site",
                       description="Cross-validate and fit a torch fusion model across sites, each with its own "
                                   "feature store, with FedAvg or FedProx: every site trains in a Ray actor pinned "
                                   "to its nodes (resource site_<name>); only weights, per-column statistics and "
                                   "counts reach the coordinator. Per-site and pooled C-index per round go to "
                                   "MLflow and <store>/_results/<run>; the final model is registered with "
                                   "per-site lineage.")
    p.add_argument("--config", default=None, help="YAML (see ray_jobs/configs/federated.yaml)")
    p.add_argument("--store", default=None, help="the coordinator's store (results, MLflow, registry)")
    p.add_argument("--site", action="append", default=[], metavar="NAME=STORE",
                   help="a site and its store (repeatable); same as sites.NAME.store=STORE")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. algorithm=fedavg rounds=20 "
                                                 "failures.drop.b=[3]")
    p.add_argument("--address", default=None, help="Ray cluster address whose site nodes declare site_<name>; "
                                                    "default: a local Ray declaring every site")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmray.cli import EXIT_USAGE, init_ray
    from mmray.config import load_config
    from mmray.train.federated import run_federated
    from mmray.train.federated_config import FederatedConfig

    overrides = list(args.overrides)
    for item in args.site:
        name, sep, store = item.partition("=")
        if not sep or not name or not store:
            print(f"mmray federated: error: --site wants NAME=STORE, got {item!r}")
            return EXIT_USAGE
        overrides.append(f"sites.{name}.store={store}")
    if args.store:
        overrides.append(f"store={args.store}")
    cfg = load_config(FederatedConfig, args.config, overrides)
    resources = None if args.address else {f"site_{n}": s.resource_amount for n, s in cfg.sites.items()}
    init_ray(args.address, resources=resources)
    report = run_federated(cfg)
    print(report.text())
    return report.exit_code
