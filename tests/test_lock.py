"""requirements.lock covers the requirements, hashes every pin, and is what the tests run on.

A requirement added to requirements*.txt without `make lock`, or an
environment that drifted from the lock (a hand-installed upgrade), fails here
with the package and the command that fixes it.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
INPUTS = ("requirements.txt", "requirements-dev.txt", "requirements-setup.txt")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def parse_lock(text: str) -> dict[str, tuple[str, list[str]]]:
    """``{canonical name: (version, [sha256 hashes])}`` of a hashed requirements file."""
    pins: dict[str, tuple[str, list[str]]] = {}
    name = None
    for line in text.splitlines():
        if m := _PIN.match(line):
            name = canonicalize_name(m.group(1))
            pins[name] = (m.group(2), [])
        elif name and (h := re.search(r"--hash=sha256:([0-9a-f]{64})", line)):
            pins[name][1].append(h.group(1))
    return pins


def requirements(path: Path) -> list[Requirement]:
    reqs = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            reqs.append(Requirement(line))
    return reqs


@pytest.fixture(scope="module")
def lock() -> dict[str, tuple[str, list[str]]]:
    return parse_lock((ROOT / "requirements.lock").read_text())


def test_parse_lock_reads_pins_and_hashes():
    text = ("# header\nfoo-bar==1.2 \\\n    --hash=sha256:" + "a" * 64 + " \\\n    --hash=sha256:" + "b" * 64 +
            "\n    # via x\nBaz_Q==3.0 \\\n    --hash=sha256:" + "c" * 64 + "\n")
    assert parse_lock(text) == {"foo-bar": ("1.2", ["a" * 64, "b" * 64]), "baz-q": ("3.0", ["c" * 64])}


@pytest.mark.parametrize("source", INPUTS)
def test_every_requirement_is_locked_at_a_version_it_allows(lock, source):
    for req in requirements(ROOT / source):
        name = canonicalize_name(req.name)
        assert name in lock, f"requirements.lock does not pin {req.name} (from {source}): run `make lock`"
        version = lock[name][0]
        assert req.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {req.name}=={version}, outside {req.specifier} (from {source}): run `make lock`")


def test_every_pin_has_a_hash(lock):
    assert len(lock) > 100  # the whole tree, not only the top level
    unhashed = [name for name, (_, hashes) in lock.items() if not hashes]
    assert not unhashed, f"requirements.lock pins without a hash: {unhashed}; run `make lock`"


def test_extras_dependencies_are_locked(lock):
    """ray[data,train,...] and moto[server] pull in packages through their extras: those are locked too."""
    missing = []
    for source in INPUTS:
        for req in requirements(ROOT / source):
            for extra in req.extras:
                for dep in map(Requirement, metadata.requires(req.name) or []):
                    if dep.marker and dep.marker.evaluate({"extra": extra}) and \
                            not dep.marker.evaluate({"extra": ""}) and canonicalize_name(dep.name) not in lock:
                        missing.append(f"{dep.name} (for {req.name}[{extra}])")
    assert not missing, f"requirements.lock lacks {missing}: run `make lock`"


def test_the_environment_is_the_locked_one(lock):
    """The tests run on exactly the locked versions (what `make setup` installs)."""
    drift = []
    for name, (version, _) in lock.items():
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = None
        if have != version:
            drift.append(f"{name} {have or 'missing'} (lock: {version})")
    assert not drift, f"the environment differs from requirements.lock: {drift}; run `make setup`"
