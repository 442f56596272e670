"""The integration marker is enforced: an unmarked test that starts Ray fails, S3 server users are marked.

Runs pytest on a throwaway test folder with a stand-in ``ray`` module (no cluster starts).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

TESTS = Path(__file__).resolve().parent

FAKE_RAY = """
_on = False
def init(**kw):
    global _on
    _on = True
def shutdown():
    global _on
    _on = False
def is_initialized():
    return _on
"""

CONFTEST = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
import pytest
from integration_guard import pytest_collection_modifyitems, pytest_runtest_call, pytest_runtest_setup

@pytest.fixture(scope="session")
def s3_server():
    return "a server"
"""

TESTS_PY = '''
import pytest
import ray

@pytest.fixture(scope="module")
def ray_session():
    ray.init()
    yield
    ray.shutdown()

def test_plain_unit():
    assert 1 + 1 == 2

def test_unmarked_starts_ray(ray_session):
    pass

def test_unmarked_after_ray_is_up(ray_session):
    pass  # Ray was already running when it began: not this test's doing

@pytest.mark.integration
def test_marked_starts_ray():
    ray.shutdown()
    ray.init()

def test_uses_the_s3_server(s3_server):
    assert s3_server == "a server"
'''


def _pytest(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA",
                           "-o", "markers=integration", *args, str(folder)],
                          cwd=folder, capture_output=True, text=True, timeout=120, check=False)


def _write(folder: Path) -> None:
    (folder / "ray.py").write_text(FAKE_RAY)
    (folder / "conftest.py").write_text(CONFTEST)
    (folder / "test_cases.py").write_text(textwrap.dedent(TESTS_PY))


def test_unmarked_test_that_starts_ray_fails_and_says_how_to_mark_it(tmp_path):
    _write(tmp_path)
    out = _pytest(tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "FAILED test_cases.py::test_unmarked_starts_ray" in out.stdout
    assert "started Ray but is not marked integration" in out.stdout
    assert "pytestmark = pytest.mark.integration" in out.stdout
    for ok in ("test_plain_unit", "test_unmarked_after_ray_is_up", "test_marked_starts_ray",
               "test_uses_the_s3_server"):
        assert f"PASSED test_cases.py::{ok}" in out.stdout, out.stdout
    assert "1 failed, 4 passed" in out.stdout


def test_s3_server_users_are_integration_tests(tmp_path):
    _write(tmp_path)
    out = _pytest(tmp_path, "-m", "not integration")
    assert "PASSED test_cases.py::test_plain_unit" in out.stdout, out.stdout
    assert "::test_uses_the_s3_server" not in out.stdout  # deselected with the marked test
    assert "1 failed, 2 passed, 2 deselected" in out.stdout
