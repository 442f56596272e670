"""Small helpers over a ``pyarrow.fs`` filesystem (local or S3) used by the store."""

from __future__ import annotations

import json
import posixpath
import uuid

import pyarrow.fs as pafs


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def put_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write a whole file so readers see either nothing or all of it.

    Locally the bytes go to a hidden temporary file that is renamed into place
    (atomic on POSIX); on S3 an object only appears once its upload completed.
    """
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
