"""Local paths and ``s3://`` URIs behind one small API (pyarrow.fs).

S3 credentials and endpoint come from the usual AWS variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``) plus
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` for S3-compatible servers.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


def join(base: str | os.PathLike, *parts: str) -> str:
    """Join path parts onto a local path or an ``s3://`` URI."""
    base = str(base)
    if is_s3(base):
        return posixpath.join(base, *parts)
    return str(Path(base, *parts))


def resolve(path: str, *, relative_to: str | os.PathLike) -> str:
    """Resolve ``path`` against the folder ``relative_to`` unless it is absolute or a URI."""
    if is_s3(path) or os.path.isabs(path):
        return path
    return join(relative_to, path)


def parent(uri: str | os.PathLike) -> str:
    uri = str(uri)
    if is_s3(uri):
        return posixpath.dirname(uri.rstrip("/"))
    return str(Path(uri).resolve().parent)


def s3_filesystem() -> pafs.S3FileSystem:
    """An S3 filesystem configured from the environment."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict = {}
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "http"
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if region:
        kwargs["region"] = region
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        kwargs["access_key"] = os.environ["AWS_ACCESS_KEY_ID"]
        kwargs["secret_key"] = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
        if os.environ.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = os.environ["AWS_SESSION_TOKEN"]
    return pafs.S3FileSystem(**kwargs)


def filesystem(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """Return ``(filesystem, path inside it)`` for a local path or ``s3://`` URI."""
    uri = str(uri)
    if is_s3(uri):
        return s3_filesystem(), uri[len("s3://"):]
    return pafs.LocalFileSystem(), str(Path(uri).resolve())


def exists(uri: str | os.PathLike) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(uri: str | os.PathLike) -> bytes:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    fs, path = filesystem(uri)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def open_input(uri: str | os.PathLike):
    """A seekable binary file object (pandas and pyarrow readers accept it)."""
    fs, path = filesystem(uri)
    return fs.open_input_file(path)


def s3_client():
    """A boto3 S3 client with the same endpoint and credentials as :func:`s3_filesystem`."""
    import boto3
    from botocore.config import Config

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    # botocore waits 60 s to connect and 60 s per read, 5 times over: a hung server would stall a
    # write for minutes. Bound it like pyarrow's S3 client (3 attempts, seconds per attempt), unless
    # the user set AWS_MAX_ATTEMPTS / AWS_RETRY_MODE.
    user_retries = os.environ.get("AWS_MAX_ATTEMPTS") or os.environ.get("AWS_RETRY_MODE")
    bounded = Config(connect_timeout=5, read_timeout=30,
                     retries=None if user_retries else {"max_attempts": 3, "mode": "standard"})
    return boto3.client("s3", endpoint_url=endpoint or None, config=bounded)


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


def checksum(uri: str | os.PathLike, *, chunk_bytes: int = 8 << 20) -> dict:
    """Identify one file's content for lineage.

    Returns ``{"uri", "size_bytes", "sha256"}`` for a local file (the sha256
    of its bytes) or ``{"uri", "size_bytes", "etag"}`` for an ``s3://``
    object (the ETag the server reports; hashing would mean downloading it).
    Raises ``FileNotFoundError`` when the file does not exist.
    """
    uri = str(uri)
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        try:
            head = s3_client().head_object(Bucket=bucket, Key=key)
        except Exception as e:  # botocore ClientError: 404/403
            code = getattr(e, "response", {}).get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(uri) from e
            raise
        return {"uri": uri, "size_bytes": int(head["ContentLength"]),
                "etag": head["ETag"].strip('"')}
    path = Path(uri).resolve()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return {"uri": str(path), "size_bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def list_files(uri: str | os.PathLike) -> list[str]:
    """Every file under a folder (recursively, sorted), as URIs like ``uri``; ``[uri]`` for a file."""
    uri = str(uri)
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(uri)
    if info.type != pafs.FileType.Directory:
        return [uri]
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    rels = sorted(posixpath.relpath(i.path, path) for i in infos if i.type == pafs.FileType.File)
    return [join(uri, rel) for rel in rels]
