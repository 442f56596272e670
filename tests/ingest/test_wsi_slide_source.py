"""Slide sources: S3 downloads once per node with companions and retries, scratch budget, handle cache."""

from __future__ import annotations

import os

import pytest

from mmray import uri as uri_mod
from mmray.errors import InputError
from mmray.ingest import slide_source
from mmray.ingest.slide_source import SlideHandles, clean_scratch, local_copy

from wsi_testdata import tiny_slides


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> str:
    return tiny_slides(tmp_path_factory.mktemp("src"), n=1)[0]["path"]


def upload(local: str, remote: str) -> str:
    uri_mod.write_bytes(remote, open(local, "rb").read())
    return remote


def test_s3_slide_is_downloaded_once_opened_and_cleaned(s3_env, slide, tmp_path, monkeypatch):
    remote = upload(slide, f"{s3_env}/slides/S1.tiff")
    calls = []
    real = slide_source._download
    monkeypatch.setattr(slide_source, "_download", lambda *a, **k: (calls.append(a[0]), real(*a, **k)))
    scratch = str(tmp_path / "scratch" / "run-1")
    path = local_copy(remote, scratch_dir=scratch)
    assert path.startswith(scratch) and os.path.basename(path) == "S1.tiff"
    assert open(path, "rb").read() == open(slide, "rb").read()
    assert local_copy(remote, scratch_dir=scratch) == path and calls == [remote]  # once per node
    handles = SlideHandles(max_open=1)
    s = handles.get(remote, scratch_dir=scratch)
    assert s.dimensions == (2048, 1536) and handles.get(remote, scratch_dir=scratch) is s  # cached handle
    handles.close_all()
    clean_scratch(scratch)
    assert not os.path.exists(scratch)


def test_transient_errors_are_retried_and_missing_slides_are_input_errors(s3_env, slide, tmp_path, monkeypatch):
    remote = upload(slide, f"{s3_env}/slides/S2.tiff")
    real = uri_mod.filesystem
    failures = {"left": 1}

    class Flaky:
        def __init__(self, fs):
            self._fs = fs

        def __getattr__(self, name):
            return getattr(self._fs, name)

        def open_input_stream(self, path):
            if failures["left"]:
                failures["left"] -= 1
                raise OSError("connection reset by peer")
            return self._fs.open_input_stream(path)

    monkeypatch.setattr(slide_source.uri_mod, "filesystem", lambda u: (Flaky(real(u)[0]), real(u)[1]))
    monkeypatch.setattr("mmray.ingest.retry.time.sleep", lambda s: None)
    path = local_copy(remote, scratch_dir=str(tmp_path / "a"))
    assert failures["left"] == 0 and os.path.getsize(path) == os.path.getsize(slide)
    with pytest.raises(InputError, match="does not exist on S3"):
        local_copy(f"{s3_env}/slides/nope.svs", scratch_dir=str(tmp_path / "a"))
    with pytest.raises(InputError, match="does not exist"):
        local_copy(str(tmp_path / "nope.svs"), scratch_dir=str(tmp_path / "a"))


def test_mrxs_companions_travel_and_the_scratch_budget_holds(s3_env, tmp_path):
    uri_mod.write_bytes(f"{s3_env}/m/slide.mrxs", b"[GENERAL]")
    uri_mod.write_bytes(f"{s3_env}/m/slide/Slidedat.ini", b"x" * 100)
    uri_mod.write_bytes(f"{s3_env}/m/slide/Data0000.dat", b"y" * 100)
    uri_mod.write_bytes(f"{s3_env}/m/other.svs", b"z" * 100)
    scratch = tmp_path / "s"
    path = local_copy(f"{s3_env}/m/slide.mrxs", scratch_dir=str(scratch))
    folder = os.path.dirname(path)
    assert sorted(os.listdir(os.path.join(folder, "slide"))) == ["Data0000.dat", "Slidedat.ini"]
    assert not os.path.exists(os.path.join(folder, "other.svs"))
    # a budget smaller than two copies: the least recently used one goes
    local_copy(f"{s3_env}/m/other.svs", scratch_dir=str(scratch), max_bytes=150)
    assert not os.path.exists(path)
