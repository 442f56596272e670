"""Whole-slide images through OpenSlide, local or ``s3://``.

Every format OpenSlide reads works: Aperio SVS, generic tiled TIFF, Hamamatsu
NDPI/VMS/VMU, Leica SCN, MIRAX MRXS, Philips TIFF, Sakura SVSLIDE, Ventana
BIF, Zeiss CZI and DICOM WSI.  A slide on S3 is downloaded once to a local
scratch folder (with its companion files: the ``<stem>/`` folder of an MRXS,
the other ``.dcm`` files of a DICOM series, the image files of a VMS/VMU),
with retries on transient errors, and removed when the run ends
(:func:`clean_scratch`) or when the scratch folder exceeds its size budget.

Worker processes keep a few slides open (:func:`slide_handle`): Ray reuses a
worker process for many tasks, so consecutive tile batches of one slide reuse
one ``OpenSlide`` handle and its tile cache instead of re-opening the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import posixpath
import shutil
import tempfile
import time
import uuid
from collections import OrderedDict
from pathlib import Path

import openslide

from mmray import uri as uri_mod
from mmray.errors import InputError
from mmray.ingest.retry import with_retry
from mmray.ingest.slide_resolution import slide_mpp  # noqa: F401  (re-exported: callers open and measure here)

log = logging.getLogger(__name__)

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif",
                  ".czi", ".dcm")
DEFAULT_SCRATCH_MAX_BYTES = 50 << 30


def default_scratch_root() -> str:
    return os.path.join(tempfile.gettempdir(), f"mmray-scratch-{os.getuid()}")


def new_scratch_dir(base: str | None = None) -> str:
    """A fresh per-run scratch folder name under ``base`` (created lazily on each node)."""
    return os.path.join(base or default_scratch_root(), f"run-{time.strftime('%Y%m%dT%H%M%S')}-"
                                                        f"{uuid.uuid4().hex[:8]}")


# ---------------------------------------------------------------- download
def _companions(uri: str) -> list[str]:
    """Files that must travel with a slide for OpenSlide to open it (the slide first)."""
    fs, path = uri_mod.filesystem(uri)
    import pyarrow.fs as pafs

    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(uri)
    if info.type == pafs.FileType.Directory:  # a DICOM WSI series
        return uri_mod.list_files(uri)
    folder, name = posixpath.split(uri)
    stem, suffix = posixpath.splitext(name)
    suffix = suffix.lower()
    if suffix == ".mrxs":
        extra = posixpath.join(folder, stem)
        return [uri] + (uri_mod.list_files(extra) if uri_mod.exists(extra) else [])
    if suffix in (".dcm", ".vms", ".vmu"):
        siblings = uri_mod.list_files(folder)
        keep = [u for u in siblings if posixpath.dirname(u) == folder and u != uri
                and (suffix == ".dcm" and u.lower().endswith(".dcm")
                     or suffix != ".dcm" and posixpath.basename(u).startswith(stem))]
        return [uri] + keep
    return [uri]


def _download(uri: str, dest: Path, *, tries: int) -> None:
    fs, path = uri_mod.filesystem(uri)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")

    def copy() -> None:
        with fs.open_input_stream(path) as src, open(tmp, "wb") as out:
            while chunk := src.read(8 << 20):
                out.write(chunk)

    try:
        with_retry(copy, what=f"download {uri}", tries=tries)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def local_copy(uri: str, *, scratch_dir: str, tries: int = 4,
               max_bytes: int = DEFAULT_SCRATCH_MAX_BYTES) -> str:
    """Local path of slide ``uri``: itself when local, else a scratch copy made once per node.

    Processes on one node share the copy (a file lock makes one of them
    download it). Raises :class:`InputError` when the slide cannot be fetched.
    """
    if not uri_mod.is_s3(uri):
        if not os.path.exists(uri):
            raise InputError(f"slide {uri} does not exist; fix the manifest path", item=uri)
        if os.path.isdir(uri):
            return _dicom_entry(uri)
        return uri
    key = hashlib.sha1(uri.encode()).hexdigest()[:16]
    root = Path(scratch_dir)
    root.mkdir(parents=True, exist_ok=True)
    folder = root / key
    done = folder / ".complete"
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not done.exists():
                try:
                    files = _companions(uri)
                except FileNotFoundError as e:
                    raise InputError(f"slide {uri} does not exist on S3; fix the manifest path",
                                     item=uri) from e
                base = posixpath.dirname(uri) if not files or files[0] == uri else uri
                folder.mkdir(exist_ok=True)
                for f in files:
                    dest = folder / posixpath.relpath(f, base)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    _download(f, dest, tries=tries)
                done.write_text(uri)
        except InputError:
            raise
        except Exception as e:
            shutil.rmtree(folder, ignore_errors=True)
            raise InputError(f"cannot download slide {uri}: {type(e).__name__}: {e}", item=uri) from e
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    os.utime(done)  # marks recent use for the size budget
    _prune(root, keep=folder, max_bytes=max_bytes)
    name = posixpath.basename(uri.rstrip("/"))
    target = folder / name
    return _dicom_entry(str(folder)) if target.is_dir() or not target.exists() else str(target)


def _dicom_entry(folder: str) -> str:
    dcm = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() == ".dcm")
    if not dcm:
        raise InputError(f"slide folder {folder} holds no .dcm file; a folder is read as a DICOM WSI series",
                         item=folder)
    return str(dcm[0])


def _prune(root: Path, *, keep: Path, max_bytes: int) -> None:
    """Delete least recently used slide copies until the scratch folder fits ``max_bytes``."""
    copies = []
    for d in root.iterdir():
        marker = d / ".complete"
        if d.is_dir() and d != keep and marker.exists():
            size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
            copies.append((marker.stat().st_mtime, size, d))
    total = sum(s for _, s, _ in copies) + sum(f.stat().st_size for f in keep.rglob("*") if f.is_file())
    for _, size, d in sorted(copies):
        if total <= max_bytes:
            break
        shutil.rmtree(d, ignore_errors=True)
        total -= size


def clean_scratch(scratch_dir: str) -> None:
    """Remove a run's scratch folder on every node of the Ray cluster (or locally without Ray)."""
    shutil.rmtree(scratch_dir, ignore_errors=True)
    try:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    except ImportError:
        return
    if not ray.is_initialized():
        return
    remove = ray.remote(num_cpus=0)(shutil.rmtree)
    refs = [remove.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
            .remote(scratch_dir, True) for node in ray.nodes() if node.get("Alive")]
    with contextlib.suppress(Exception):
        ray.get(refs, timeout=60)


# ---------------------------------------------------------------- opening
def open_slide(path: str, *, name: str) -> openslide.OpenSlide:
    """``OpenSlide(path)``; a file OpenSlide cannot read raises :class:`InputError` naming it."""
    try:
        return openslide.OpenSlide(path)
    except openslide.OpenSlideUnsupportedFormatError as e:
        raise InputError(f"OpenSlide cannot open {path} ({e}): the file is truncated, corrupt or not in a "
                         f"format OpenSlide reads ({', '.join(SLIDE_SUFFIXES)})", item=name) from e
    except (openslide.OpenSlideError, OSError) as e:
        raise InputError(f"cannot open {path}: {type(e).__name__}: {e}", item=name) from e


class SlideHandles:
    """A small per-process LRU cache of open slides, keyed by URI."""

    def __init__(self, max_open: int = 4):
        self.max_open = max_open
        self._open: OrderedDict[str, openslide.OpenSlide] = OrderedDict()

    def get(self, uri: str, *, scratch_dir: str, tries: int = 4, max_bytes: int = DEFAULT_SCRATCH_MAX_BYTES,
            max_open: int | None = None) -> openslide.OpenSlide:
        if max_open:
            self.max_open = max_open
        if uri in self._open:
            self._open.move_to_end(uri)
            return self._open[uri]
        path = local_copy(uri, scratch_dir=scratch_dir, tries=tries, max_bytes=max_bytes)
        slide = open_slide(path, name=uri)
        self._open[uri] = slide
        while len(self._open) > self.max_open:
            _, old = self._open.popitem(last=False)
            old.close()
        return slide

    def drop(self, uri: str) -> None:
        """Close a slide (e.g. after a read error: OpenSlide handles stay in error state)."""
        slide = self._open.pop(uri, None)
        if slide is not None:
            with contextlib.suppress(Exception):
                slide.close()

    def close_all(self) -> None:
        for uri in list(self._open):
            self.drop(uri)


_HANDLES = SlideHandles()


def slide_handle(uri: str, *, scratch_dir: str, tries: int = 4, max_bytes: int = DEFAULT_SCRATCH_MAX_BYTES,
                 max_open: int | None = None) -> openslide.OpenSlide:
    """An open slide from this process's cache (see :class:`SlideHandles`)."""
    return _HANDLES.get(uri, scratch_dir=scratch_dir, tries=tries, max_bytes=max_bytes, max_open=max_open)


def drop_handle(uri: str) -> None:
    _HANDLES.drop(uri)
