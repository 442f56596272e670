"""The serving token: where it comes from, who may go without it, and keeping it out of records.

The token is read where ``mmray serve`` runs, first that applies: ``token:``
in the config, the file named by ``token_file``, the environment variable
named by ``token_env`` (``MMRAY_SERVE_TOKEN``). Replicas get only its SHA-256
(:func:`digest`), so neither Ray's deployment arguments, its controller
checkpoints nor the dashboard ever hold the token itself.

A host other than a loopback address is reachable by other machines, so
binding one without a token is refused unless ``allow_unauthenticated: true``
says it is meant (e.g. an authenticating proxy in front).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
from pathlib import Path

from mmray.errors import ConfigError

SECRET_KEYS = ("token",)  # config keys whose value is never written anywhere
REDACTED = "<redacted>"


def read_token(*, token: str | None, token_file: str | None, token_env: str | None) -> str | None:
    """The configured token, stripped; None when none is set (an empty one counts as none)."""
    if token and token.strip():
        return token.strip()
    if token_file:
        path = Path(token_file).expanduser()
        try:
            text = path.read_text()
        except OSError as e:
            why = (f"cannot read the serving token from {path}: {e.strerror or e}; create it (one line, "
                   f"the token) or unset token_file")
            raise ConfigError([("token_file", why)]) from None
        if not text.strip():
            raise ConfigError([("token_file", f"{path} is empty; write the token into it")])
        return text.strip()
    value = os.environ.get(token_env, "") if token_env else ""
    return value.strip() or None


def digest(token: str | None) -> str | None:
    return hashlib.sha256(token.encode()).hexdigest() if token else None


def is_loopback(host: str) -> bool:
    """Whether ``host`` is only reachable from this machine (127.0.0.0/8, ::1, a name resolving only there)."""
    host = host.strip().strip("[]")
    if not host:
        return False  # binds every interface
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if host.lower() == "localhost":
        return True
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def bind_problem(*, host: str, has_token: bool, allow_unauthenticated: bool) -> str | None:
    """Why binding ``host`` is refused (None: allowed)."""
    if has_token or allow_unauthenticated or is_loopback(host):
        return None
    return (f"host {host!r} is not a loopback address, so other machines can reach the endpoint, and no "
            f"serving token is set: set one (MMRAY_SERVE_TOKEN=... where mmray serve runs, or "
            f"token_file: PATH to a file holding it), or set allow_unauthenticated: true to serve "
            f"without authentication on purpose (e.g. behind an authenticating proxy)")


def redact(config):
    """A copy of a config mapping (nested: a pipeline's) with every secret value replaced, for reports."""
    if isinstance(config, dict):
        return {k: (REDACTED if k in SECRET_KEYS and v else redact(v)) for k, v in config.items()}
    if isinstance(config, list):
        return [redact(v) for v in config]
    return config


def refuse_secret_overrides(overrides: list[str] | tuple[str, ...]) -> None:
    """A token given as ``token=...`` on a command line ends up in shell history, ``ps`` and, for a
    Ray job, the job's entrypoint that the dashboard shows: refuse it and say what to do instead."""
    keys = [o.partition("=")[0].strip() for o in overrides if "=" in o]
    bad = [k for k in keys if k.split(".")[-1] in SECRET_KEYS]
    why = ("do not pass the serving token on the command line (it is recorded in shell history, the process "
           "list and Ray's job table); export MMRAY_SERVE_TOKEN or set token_file: PATH instead")
    if bad:
        raise ConfigError([(key, why) for key in bad])
