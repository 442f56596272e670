"""Small helpers over a ``pyarrow.fs`` filesystem (local or S3) used by the store."""

from __future__ import annotations

import contextlib
import json
import posixpath
import uuid

import pyarrow.fs as pafs

from mmray.errors import StoreError

# What a write that failed midway tells its caller to do (the commit protocol keeps the rest safe).
NOT_COMMITTED = ("nothing of this version is committed, so readers and latest() still see only the versions "
                 "committed before it; check that the store is reachable and writable, then run the write again "
                 "(it takes a new version id; FeatureStore.gc removes the partial folder)")


def display(fs: pafs.FileSystem, path: str) -> str:
    """``path`` as a user writes it: ``s3://bucket/key`` on S3, the local path otherwise."""
    return f"s3://{path}" if isinstance(fs, pafs.S3FileSystem) else path


@contextlib.contextmanager
def io_failure(where: str, *, doing: str, then: str = NOT_COMMITTED):
    """Raise an I/O error inside as a :class:`StoreError` saying where, what failed and what to do.

    pyarrow raises ``OSError`` for S3 network failures too (after its bounded
    retries: 3 attempts, a 1 s connect timeout and a 3 s stall timeout), so a
    dead or hung S3 server ends a write within seconds, with this message.
    """
    try:
        yield
    except StoreError:
        raise
    except OSError as e:
        raise StoreError(f"{where}: {doing} failed ({type(e).__name__}: {e}); {then}") from e


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def put_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write a whole file so readers see either nothing or all of it.

    Locally the bytes go to a hidden temporary file that is renamed into place
    (atomic on POSIX); on S3 an object only appears once its upload completed.
    Refused when ``path`` is in another environment's store (:mod:`mmray.environments`).
    """
    from mmray import environments

    environments.check_store_write(environments.store_location(fs, path))
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(posixpath.dirname(path), recursive=True)
        tmp = posixpath.join(posixpath.dirname(path), f".tmp-{uuid.uuid4().hex}")
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, path)
    else:
        with fs.open_output_stream(path) as f:
            f.write(data)


def put_json(fs: pafs.FileSystem, path: str, obj) -> None:
    put_bytes(fs, path, json.dumps(obj, indent=2, sort_keys=True).encode())


def get_json(fs: pafs.FileSystem, path: str):
    with fs.open_input_stream(path) as f:
        return json.loads(f.read())


def subdirs(fs: pafs.FileSystem, path: str) -> list[str]:
    """Names of the folders directly under ``path`` (``[]`` when it does not exist)."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.Directory)


def files_under(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    """Every file below ``path``, recursively (``[]`` when it does not exist)."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [i for i in infos if i.type == pafs.FileType.File]


def newest_mtime_s(fs: pafs.FileSystem, path: str) -> float | None:
    """Seconds since the epoch of the newest file below ``path`` (``None``: no file has one)."""
    times = [i.mtime.timestamp() for i in files_under(fs, path) if i.mtime is not None]
    return max(times) if times else None


def abort_uploads(fs: pafs.FileSystem, path: str) -> int:
    """Abort the S3 multipart uploads begun under folder ``path`` and never completed.

    A writer killed mid-file (or whose S3 server died) leaves one: invisible to
    listings and readers, but its uploaded parts take space until aborted.
    Returns how many were aborted (always 0 on a local filesystem).
    """
    if not isinstance(fs, pafs.S3FileSystem):
        return 0
    from mmray import uri as uri_mod

    bucket, _, prefix = path.partition("/")
    client = uri_mod.s3_client()
    aborted = 0
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket,
                                                                         Prefix=prefix.rstrip("/") + "/"):
        for upload in page.get("Uploads", []):
            client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            aborted += 1
    return aborted
