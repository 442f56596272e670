"""The ``integration`` marker, enforced: hooks that tests/conftest.py imports.

- A test that needs the ``s3_server`` fixture (a server process) is marked ``integration``
  wherever it lives, before ``-m`` selects.
- A test that is not marked ``integration`` but started Ray (itself or through a fixture) fails
  and says how to mark it, so ``make test-fast`` (``-m "not integration and not slow"``) stays
  free of clusters.
"""

from __future__ import annotations

import sys

import pytest

_RAY_BEFORE = pytest.StashKey[bool]()


def _ray_running() -> bool:
    ray = sys.modules.get("ray")  # never import Ray here
    return bool(ray is not None and ray.is_initialized())


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(config, items):
    for item in items:
        if "s3_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    item.stash[_RAY_BEFORE] = _ray_running()  # before any fixture of this test starts
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield
    if _ray_running() and not item.stash.get(_RAY_BEFORE, True) and not item.get_closest_marker("integration"):
        pytest.fail(f"{item.nodeid} started Ray but is not marked integration: add "
                    "`pytestmark = pytest.mark.integration` to its module (or mark the test)", pytrace=False)
    return result
