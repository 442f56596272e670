"""The ``mmray`` console script: one subcommand per stage.

Exit status (DESIGN.md): 0 when everything succeeded, 3 when the job finished
but some inputs failed (each listed), 1 when the job itself failed, 2 for a
usage error.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from mmray import logs
from mmray.errors import MmrayError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3

log = logging.getLogger("mmray")


def _add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None,
                   help="Ray cluster address (e.g. auto or ray://host:10001); default: start Ray locally")


def init_ray(address: str | None, *, num_cpus: int | None = None, resources: dict | None = None) -> None:
    """Connect to ``address`` or start an embedded local Ray (once per process; ``resources``: custom ones)."""
    import ray

    if ray.is_initialized():
        return
    logs.quiet_ray_consoles()  # before ray.init: its start-up banners go to the log file
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, resources=resources, include_dashboard=False, log_to_driver=False)
    import ray.data  # noqa: F401  (installs Ray Data's console handler now, so it can be quietened)

    logs.quiet_ray_consoles()
    if logs.log_file():
        logging.getLogger("mmray").info("Ray started; its INFO lines go to %s (-v shows them here)", logs.log_file())


# --- synth ------------------------------------------------------------------


def _setup_synth(sub) -> Callable[[argparse.Namespace], int]:
    p = sub.add_parser("synth", help="write a synthetic cohort in real file formats",
                       description="Write a synthetic multi-modal cohort (slides, CT + SEG, genomics, "
                                   "clinical) with planted signal and a truth.json.")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--patients", type=int, default=None, help="number of patients (default: the profile's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", choices=["tiny", "demo", "large", "xl"], default="tiny",
                   help="sizes (xl: real-size 100,000 x 80,000 px slides at 0.25 um/px, written tile by tile)")
    p.add_argument("--slide-px", default=None, metavar="W,H", help="level-0 slide size instead of the profile's")
    p.add_argument("--corrupt", type=int, default=0, metavar="K",
                   help="write K deliberately broken inputs, listed in truth.json")
    p.add_argument("--sites", type=int, default=0, metavar="N", help="also split it into N site cohorts by "
                   "tissue source site, under OUT/sites/<name>/ (federated training)")
    _add_address(p)
    p.set_defaults(func=_run_synth)
    return _run_synth


def _run_synth(args: argparse.Namespace) -> int:
    from mmray.synth.cohort import write_cohort
    from mmray.synth.profiles import get_profile, parse_slide_px

    slide_px = parse_slide_px(args.slide_px) if args.slide_px else None
    if get_profile(args.profile).use_ray or args.address:
        init_ray(args.address)
    result = write_cohort(args.out, patients=args.patients, seed=args.seed, profile=args.profile,
                          corrupt=args.corrupt, slide_px=slide_px)
    print(result.summary())
    if args.sites:  # site cohorts for federated training (mmray.synth.sites)
        print(importlib.import_module("mmray.synth.sites").split_sites_text(args.out, args.sites))
    return EXIT_OK


# --- validate ---------------------------------------------------------------


def _setup_validate(sub) -> None:
    p = sub.add_parser("validate", help="check a cohort.yaml and the files it names")
    p.add_argument("--cohort", required=True, help="path or s3:// URI of cohort.yaml")
    p.set_defaults(func=_run_validate)


def _run_validate(args: argparse.Namespace) -> int:
    from mmray.cohort import load_cohort

    cohort = load_cohort(args.cohort)
    manifest = cohort.manifest()
    counts = manifest["modality"].value_counts().to_dict() if len(manifest) else {}
    print(f"cohort {cohort.spec.name!r} is valid: parts {', '.join(cohort.modalities()) or 'none'}; "
          f"manifest rows {len(manifest)} {counts}")
    return EXIT_OK


# --- ingest -----------------------------------------------------------------


def _setup_ingest(sub) -> None:
    p = sub.add_parser("ingest", help="run a cohort's modalities into the feature store",
                       description="Ingest every modality of a cohort (clinical, expression, mutations, cnv, "
                                   "wsi, ct) into versioned feature groups; failed inputs go to the failures "
                                   "table and the exit status is 3.")
    p.add_argument("--cohort", required=True, help="cohort.yaml (path or s3:// URI)")
    p.add_argument("--store", required=True, help="feature store folder or s3://bucket/prefix")
    p.add_argument("--modalities", default="", help="comma-separated subset, e.g. wsi,ct (default: all present)")
    p.add_argument("--config", default=None, help="ingest YAML (see ray_jobs/configs/ingest.yaml)")
    p.add_argument("--force", action="store_true", help="recompute what the store already holds")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. wsi.target_mpp=1.0")
    _add_address(p)
    p.set_defaults(func=_run_ingest)


def _run_ingest(args: argparse.Namespace) -> int:
    from mmray.config import load_config
    from mmray.ingest.report import summarise
    from mmray.ingest.run import IngestConfig, needs_ray, run_ingest

    overrides = [f"cohort={args.cohort}", f"store={args.store}", *args.overrides]
    if args.modalities:
        overrides.append(f"modalities=[{args.modalities}]")
    if args.force:
        overrides.append("force=true")
    cfg = load_config(IngestConfig, args.config, overrides)
    if args.address or needs_ray(cfg):  # tables alone run in-process: no cluster to start
        init_ray(args.address)
    reports = run_ingest(cfg)
    print(summarise(reports))
    return EXIT_PARTIAL if any(r.failures for r in reports) else EXIT_OK


# --- store ------------------------------------------------------------------


def _setup_store(sub) -> None:
    p = sub.add_parser("store", help="list feature groups, versions and lineage")
    ssub = p.add_subparsers(dest="store_command", metavar="ACTION")
    ssub.required = True
    ls = ssub.add_parser("ls", help="groups with their versions and row counts")
    ls.add_argument("uri", help="feature store folder or s3://bucket/prefix")
    ls.set_defaults(func=_run_store_ls)
    show = ssub.add_parser("show", help="one group's manifest: lineage, parameters, schema")
    show.add_argument("uri")
    show.add_argument("group", help="GROUP or GROUP@VERSION")
    show.set_defaults(func=_run_store_show)
    fail = ssub.add_parser("failures", help="inputs that failed, with the reason")
    fail.add_argument("uri")
    fail.add_argument("--stage", default=None)
    fail.add_argument("--cohort", default=None, help="cohort.yaml: show the file behind each SRC- label (needs "
                                                     "the pseudonym key; printed here, never written)")
    fail.set_defaults(func=_run_store_failures)


def _run_store_ls(args: argparse.Namespace) -> int:
    from mmray.store import FeatureStore
    from mmray.store.describe import describe_groups

    print(describe_groups(FeatureStore(args.uri)))
    return EXIT_OK


def _run_store_show(args: argparse.Namespace) -> int:
    from mmray.store import FeatureStore
    from mmray.store.describe import describe_manifest

    group, _, version = args.group.partition("@")
    print(describe_manifest(FeatureStore(args.uri), group, version=version or None))
    return EXIT_OK


def _run_store_failures(args: argparse.Namespace) -> int:
    from mmray.store import FeatureStore

    table = FeatureStore(args.uri).failures(args.stage)
    if table.empty:
        print("no failures recorded")
    else:
        columns = ["stage", "patient_id", "item", "reason", "recorded_utc"]
        if args.cohort:
            from mmray.ingest.identifier_scan import label_sources

            files = label_sources(args.cohort)
            table["file"] = [files.get(str(i).split(":")[0], "") for i in table["item"]]
            columns.insert(3, "file")
        print(table[columns].to_string(index=False))
    return EXIT_OK


# --- signatures -------------------------------------------------------------


def _setup_signatures(sub) -> None:
    p = sub.add_parser("signatures", help="train, gate and register one survival model per gene signature",
                       description="Train one penalised Cox model per GMT signature (plus ALL_GENES) as "
                                   "parallel Ray tasks on shared folds, gate each on its cross-validated "
                                   "C-index and register the passing ones in MLflow; resumes finished work.")
    p.add_argument("--cohort", required=True, help="cohort.yaml (its `signatures` GMT is used)")
    p.add_argument("--store", required=True, help="feature store with labels and expression groups")
    p.add_argument("--only", default="", help="comma-separated signature names (ALL_GENES for all genes)")
    p.add_argument("--gmt", default=None, help="a GMT file instead of the cohort's")
    p.add_argument("--config", default=None, help="signatures YAML (see ray_jobs/configs/signatures.yaml)")
    p.add_argument("--force", action="store_true", help="retrain signatures that already have a finished run")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. registry.gate.threshold=0.6")
    _add_address(p)
    p.set_defaults(func=_run_signatures)


def _run_signatures(args: argparse.Namespace) -> int:
    from mmray.config import load_config
    from mmray.registry.signatures import SignaturesConfig, run_signatures

    overrides = [f"cohort={args.cohort}", f"store={args.store}", *args.overrides]
    if args.only:
        overrides.append(f"only=[{args.only}]")
    if args.gmt:
        overrides.append(f"gmt={args.gmt}")
    if args.force:
        overrides.append("force=true")
    cfg = load_config(SignaturesConfig, args.config, overrides)
    init_ray(args.address)
    report = run_signatures(cfg)
    print(report.table())
    return report.exit_code


# --- serve --------------------------------------------------------------------


def _setup_serve(sub) -> None:
    p = sub.add_parser("serve", help="serve registered models over HTTP (Ray Serve, multiplexed)",
                       description="Start the Ray Serve application that hosts every registered model holding "
                                   "the serving alias (champion): POST /v1/predict, GET /v1/models, /healthz.")
    p.add_argument("--store", default=None, help="local feature store whose registry (<store>/_mlflow) to serve")
    p.add_argument("--config", default=None, help="serve YAML (see ray_jobs/configs/serve.yaml)")
    p.add_argument("--host", default=None, help="HTTP host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default 8000)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. max_models_per_replica=32")
    _add_address(p)
    p.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from mmray.config import load_config
    from mmray.serve.app import run_serve
    from mmray.serve.auth import refuse_secret_overrides
    from mmray.serve.config import ServeConfig, check_bind

    refuse_secret_overrides(args.overrides)
    overrides = list(args.overrides)
    for key in ("store", "host", "port"):
        if getattr(args, key) is not None:
            overrides.append(f"{key}={getattr(args, key)}")
    cfg = load_config(ServeConfig, args.config, overrides)
    check_bind(cfg)  # before Ray starts
    init_ray(args.address)
    return run_serve(cfg, local=args.address is None)


# --- train and tune: YAML-configured jobs on the store's folds ------------------


def _add_job_parser(sub, name: str, help: str, description: str, example: str, func) -> None:
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("--config", default=None, help=f"{name} YAML (see ray_jobs/configs/{name}.yaml)")
    p.add_argument("--store", default=None, help="feature store (overrides the config's store)")
    p.add_argument("overrides", nargs="*", help=f"key=value overrides, e.g. {example}")
    _add_address(p)
    p.set_defaults(func=func)


def _run_job(args: argparse.Namespace, config_cls, runner) -> int:
    from mmray.config import load_config

    overrides = ([f"store={args.store}"] if args.store else []) + list(args.overrides)
    cfg = load_config(config_cls, args.config, overrides)
    init_ray(args.address)
    report = runner(cfg)
    print(report.text())
    return report.exit_code


def _setup_train(sub) -> None:
    _add_job_parser(
        sub, "train", help="cross-validate models x modality sets on the store's folds (Ray Train)",
        description="Train every model on every modality set over the store's saved folds with "
                    "Ray Train (TorchTrainer DDP, LightGBMTrainer), write the results table, summary "
                    "with bootstrap intervals and modality ablation into the store and MLflow.",
        example="train.workers=2 folds.n_folds=3", func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from mmray.train.config import TrainJobConfig
    from mmray.train.cv import run_train

    return _run_job(args, TrainJobConfig, run_train)


def _setup_tune(sub) -> None:
    _add_job_parser(
        sub, "tune", help="tune a model with Ray Tune (ASHA + Optuna) on the store's folds",
        description="Search a model's hyperparameters with Ray Tune (Optuna search, ASHA early "
                    "stopping); each trial is scored on the mean over the saved folds and logged "
                    "to MLflow; the best config is refitted and cross-validated again.",
        example="model=heec search.num_samples=8", func=_run_tune)


def _run_tune(args: argparse.Namespace) -> int:
    from mmray.tune.config import TuneJobConfig
    from mmray.tune.tuner import run_tune

    return _run_job(args, TuneJobConfig, run_tune)


def _setup_pipeline(sub) -> None:
    _add_job_parser(
        sub, "pipeline", help="run the stages in order from one YAML, skipping what the store holds",
        description="Run synth, ingest, train, tune, register, signatures, serve and report in order "
                    "(or the `stages` the config lists); each step skips what the store already holds.",
        example="stages=[ingest,train] cohort=/data/cohort.yaml", func=_run_pipeline)


def _run_pipeline(args: argparse.Namespace) -> int:
    from mmray.pipeline import PipelineConfig, run_pipeline
    from mmray.serve.auth import refuse_secret_overrides

    refuse_secret_overrides(args.overrides)  # serve.token=...
    return _run_job(args, PipelineConfig, run_pipeline)


# --- register ---------------------------------------------------------------


def _setup_register(sub) -> None:
    p = sub.add_parser("register", help="gate and register a tuned model (mmray tune's best) for serving",
                       description="Wrap a Ray Tune run's refitted best model with its fitted preprocessing as "
                                   "an MLflow pyfunc (features by training-table column name), gate it on the "
                                   "run's cross-validated metric and register it with lineage and the champion "
                                   "alias; a model that fails the gate is logged with the reason.")
    p.add_argument("--store", required=True, help="the feature store the run was tuned on")
    p.add_argument("--tune-run", required=True, help="tune output folder, or a run name under <store>/_results/")
    p.add_argument("--name", default=None, help="registered model name (default mmray__<model>)")
    p.add_argument("--config", default=None, help="register YAML (see ray_jobs/configs/register.yaml)")
    p.add_argument("--force", action="store_true", help="register again a model registered before with this gate")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. registry.gate.threshold=0.6")
    _add_address(p)  # accepted like every command; registration itself runs in this process
    p.set_defaults(func=_run_register)


def _run_register(args: argparse.Namespace) -> int:
    from mmray.config import load_config
    from mmray.registry.trained import RegisterConfig, exit_code, outcome_text, run_register

    overrides = [f"store={args.store}", f"tune_run={args.tune_run}", *args.overrides]
    if args.name:
        overrides.append(f"name={args.name}")
    if args.force:
        overrides.append("force=true")
    outcome = run_register(load_config(RegisterConfig, args.config, overrides))
    print(outcome_text(outcome))
    return exit_code(outcome)


# --- report -----------------------------------------------------------------


def _setup_report(sub) -> None:
    p = sub.add_parser("report", help="write the self-contained HTML report of a run",
                       description="One HTML file (images embedded): cohort and modality coverage, failures, "
                                   "leakage and bias findings, cross-validated results, ablation, Kaplan-Meier "
                                   "curves with the log-rank test, signature models, slide heatmaps. Sections "
                                   "whose inputs are missing say which command makes them.")
    p.add_argument("--store", required=True, help="feature store folder or s3://bucket/prefix")
    p.add_argument("--out", default=None, help="HTML file (default <store>/_reports/report.html)")
    p.add_argument("--cohort", default=None, help="cohort.yaml: its name and manifest (slide files)")
    p.add_argument("--run", default=None, help="train run under <store>/_results (default: the newest)")
    p.add_argument("--address", default=None, help="accepted like every command's; the report reads files only")
    p.set_defaults(func=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from mmray.report.build import ReportConfig, run_report

    path = run_report(ReportConfig(store=args.store, out=args.out, cohort=args.cohort, run=args.run))
    print(f"report written to {path}")
    return EXIT_OK


# --- demo -------------------------------------------------------------------


def _setup_privacy_scan(sub) -> None:
    p = sub.add_parser("privacy-scan", help="check that folders mmray wrote hold none of a cohort's raw identifiers",
                       description="Collect a cohort's raw identifiers (patient ids, barcodes, file and folder "
                                   "names, DICOM UIDs and PHI, input paths) and scan every file under PATH "
                                   "(Parquet, SQLite, JSON, HTML, logs, archives) for them. Exit 1 on any hit.")
    p.add_argument("--cohort", required=True, help="the cohort.yaml whose identifiers to look for")
    p.add_argument("paths", nargs="+", metavar="PATH", help="folders or files to scan (store, logs, MLflow)")
    p.add_argument("--also", action="append", default=[], metavar="VALUE",
                   help="another identifier to look for (e.g. a folder name above the cohort); repeatable")
    p.set_defaults(func=_run_privacy_scan)


def _run_privacy_scan(args: argparse.Namespace) -> int:
    from mmray.ingest.identifier_scan import Scanner, cohort_identifiers

    identifiers = cohort_identifiers(args.cohort, also=args.also)
    findings, n_files = Scanner(identifiers).scan(args.paths)
    for f in findings:
        print(f.line())
    print(f"privacy-scan: {len(identifiers)} identifiers, {n_files} files, {len(findings)} finding(s)")
    return EXIT_FAILED if findings else EXIT_OK


def _setup_demo(sub) -> None:
    p = sub.add_parser("demo", help="every stage on the demo synthetic cohort, then report.html "
                                     "(settings: ray_jobs/configs/demo.yaml)")
    p.add_argument("--out", default="demo_out", help="work folder for the demo")
    p.add_argument("--profile", choices=["tiny", "demo", "large"], default="demo")
    p.add_argument("--patients", type=int, default=None)
    p.add_argument("--seed", type=int, default=7)
    _add_address(p)
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from mmray.demo import run_demo

    init_ray(args.address)
    return run_demo(out_dir=args.out, profile=args.profile, patients=args.patients, seed=args.seed)


# --- entry point --------------------------------------------------------------

# Modules that add their own subcommands: ``setup(sub)`` registers parsers (keep imports inside the run
# functions so ``mmray --help`` stays fast).  One line per module keeps cli.py small.
COMMAND_MODULES: tuple[str, ...] = ("mmray.cli_env", "mmray.cli_explain", "mmray.cli_federated", "mmray.cli_view",
                                     "mmray.cli_pretrain")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmray", description="Multi-modal cancer ML on Ray.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and every library's INFO lines on the console too")
    parser.add_argument("--log-file", default=None, metavar="PATH",
                        help=f"the full log (default: ${logs.LOG_DIR_ENV} or <tmp>/mmray-logs, one file per run)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _setup_synth(sub)
    _setup_validate(sub)
    _setup_ingest(sub)
    _setup_store(sub)
    _setup_signatures(sub)
    _setup_serve(sub)
    _setup_train(sub)
    _setup_tune(sub)
    _setup_register(sub)
    _setup_pipeline(sub)
    _setup_report(sub)
    _setup_privacy_scan(sub)
    _setup_demo(sub)
    for module in COMMAND_MODULES:  # commands that live in their own modules (each has ``setup(sub)``)
        importlib.import_module(module).setup(sub)
    importlib.import_module("mmray.cli_env").add_env_options(parser)  # --env on every command
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(verbose=args.verbose,
                   log_file=Path(args.log_file) if args.log_file else logs.default_log_file(args.command))
    try:
        importlib.import_module("mmray.cli_env").apply(args)  # --env: store, MLflow, write guards
        return args.func(args)
    except MmrayError as e:
        print(f"mmray {args.command}: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"mmray {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
