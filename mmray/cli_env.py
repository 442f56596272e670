"""``--env`` on every command, ``mmray promote`` and ``mmray envs`` (see mmray/environments.py).

``add_env_options`` gives every subcommand ``--env NAME`` and
``--environments PATH``; ``apply`` (called by ``mmray.cli.main`` before a
command runs) activates the environment: its store fills ``--store`` when
none was given, its MLflow URIs are exported, its serve settings fill
``--host``/``--port``, and the write guards refuse anything aimed at
another environment's store or registry.
"""

from __future__ import annotations

import argparse
import os


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:  # argparse has no public walk over subcommands
        if isinstance(action, argparse._SubParsersAction):
            for p in action.choices.values():
                yield p
                yield from _subparsers(p)


def add_env_options(parser: argparse.ArgumentParser) -> None:
    for p in _subparsers(parser):
        has = {s for a in p._actions for s in a.option_strings}
        if "--env" not in has and not any(isinstance(a, argparse._SubParsersAction) for a in p._actions):
            p.add_argument("--env", default=None, help="environment to run in (environments YAML; default "
                                                       "$MMRAY_ENV); writes to other environments are refused")
            p.add_argument("--environments", default=None, help="environments YAML (default $MMRAY_ENVIRONMENTS "
                                                                "or ./environments.yaml)")


def apply(args: argparse.Namespace) -> None:
    """Activate ``--env`` (or ``$MMRAY_ENV``) for this command (module doc)."""
    from mmray import environments

    name = getattr(args, "env", None) or os.environ.get(environments.ENV_VAR)
    if not name or args.command == "promote":  # promotion names both environments itself
        return
    path = getattr(args, "environments", None)
    env = environments.get_environment(name, path)
    environments.activate(env, path=path)
    if hasattr(args, "store") and not args.store:
        args.store = env.store
    for key in ("host", "port"):
        if hasattr(args, key) and getattr(args, key) is None and key in env.serve:
            setattr(args, key, env.serve[key])


def setup(sub) -> None:
    p = sub.add_parser("promote", help="move a registered model between environments (re-gated, with lineage)",
                       description="Re-evaluate MODEL[@VERSION|@ALIAS] (default @champion) of the --from "
                                   "environment on the --to environment's re-validation data, refuse it with the "
                                   "reason when the target's gate fails, else copy its artifact and full lineage "
                                   "into the target registry and set the target alias.")
    p.add_argument("model", metavar="MODEL[@VERSION]")
    p.add_argument("--from", dest="source", required=True, help="source environment, e.g. dev")
    p.add_argument("--to", dest="target", required=True, help="target environment, e.g. prod")
    p.set_defaults(func=_run_promote)
    e = sub.add_parser("envs", help="list the environments of the environments YAML")
    e.set_defaults(func=_run_envs)


def _run_promote(args: argparse.Namespace) -> int:
    from mmray.environments import load_environments
    from mmray.errors import ConfigError
    from mmray.registry.promote import promote

    envs = load_environments(args.environments)
    for n in (args.source, args.target):
        if n not in envs:
            raise ConfigError(f"unknown environment {n!r}; defined: {sorted(envs)}")
    print(promote(args.model, source=envs[args.source], target=envs[args.target]).text())
    return 0


def _run_envs(args: argparse.Namespace) -> int:
    from mmray.environments import load_environments

    for env in load_environments(args.environments).values():
        tracking, registry = env.mlflow_uris()
        print(f"{env.name:<8} store={env.store} tracking={tracking} registry={registry} "
              f"protected={env.protected} serve={env.serve}")
    return 0
