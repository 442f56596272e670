"""Tile features computed elsewhere, in and out: TRIDENT / CLAM h5 files <-> the ``wsi_tiles`` bag group.

The layout both tools write (one file per slide, named after the slide)::

    features   (N, D) float        one embedding per patch
    coords     (N, 2) int          level-0 (x, y) of each patch's top-left corner
    coords.attrs: patch_size_level0 (TRIDENT), or patch_size + patch_level (CLAM: the level-0 size is
                  patch_size times that level's downsample); optional patch_mpp / encoder / slide_id

:func:`import_features` keys files to the cohort manifest's slides (file
``<slide file stem>.h5``, ``<item_id>.h5`` or ``<slide_id>.h5``; TRIDENT's
``features_<encoder>/`` subfolders are searched too), checks each against its
slide (opened with OpenSlide for its size and resolution): ``features`` and
``coords`` must have the same number of rows, every coordinate must lie
inside the slide, and the embeddings must be finite; a slide that fails is
reported with the reason and left out, the rest are written as one new
version of the bag group with the user's encoder name as ``encoder_id``, and
the slide and patient aggregates are updated from it.
:func:`export_features` writes a version's tile bags back in this layout.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from mmray import uri as uri_mod
from mmray.errors import DataError, InputError
from mmray.features.tile_pipeline import META_TYPES

log = logging.getLogger(__name__)
FORMATS = ("trident", "clam")


@dataclass
class ImportResult:
    group: str
    version: str | None
    encoder_id: str
    slides: dict[str, int] = field(default_factory=dict)  # slide_id -> tiles imported
    failures: list[dict] = field(default_factory=list)
    groups: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        lines = [f"imported {sum(self.slides.values())} tile(s) of {len(self.slides)} slide(s) as {self.encoder_id} "
                 f"-> {', '.join(f'{g}@{v}' for g, v in self.groups.items()) or 'nothing written'}"]
        lines += [f"FAILED {f['item']}: {f['reason']}" for f in self.failures]
        return "\n".join(lines)


def _find_files(folder: str) -> dict[str, str]:
    """stem -> h5 file under ``folder`` (one level of subfolders, e.g. TRIDENT's ``features_<encoder>/``)."""
    out: dict[str, str] = {}
    for f in uri_mod.list_files(folder):
        name = f.rstrip("/").rsplit("/", 1)[-1]
        if name.endswith((".h5", ".hdf5")):
            out.setdefault(name.rsplit(".", 1)[0], f)
    return out


def _open_h5(uri: str):
    import h5py

    if uri_mod.is_s3(uri):
        tmp = tempfile.NamedTemporaryFile(suffix=".h5", delete=False)
        tmp.write(uri_mod.read_bytes(uri))
        tmp.close()
        return h5py.File(tmp.name, "r"), tmp.name
    return h5py.File(uri, "r"), None


def read_h5(uri: str, *, name: str) -> dict:
    """``{features (N, D) float32, coords (N, 2) int64, attrs}`` of one file; :class:`InputError` when its
    datasets are missing or their shapes disagree."""
    try:
        f, tmp = _open_h5(uri)
    except OSError as e:
        raise InputError(f"slide {name}: {uri} is not a readable h5 file: {e}", item=name) from e
    try:
        missing = [k for k in ("features", "coords") if k not in f]
        if missing:
            raise InputError(f"slide {name}: h5 file has no dataset(s) {missing} (datasets: {list(f.keys())}); "
                             f"expected TRIDENT/CLAM's `features` (N, D) and `coords` (N, 2)", item=name)
        feats = np.asarray(f["features"][()])
        coords = np.asarray(f["coords"][()])
        attrs = {**{k: _plain(v) for k, v in f.attrs.items()}, **{k: _plain(v) for k, v in f["coords"].attrs.items()}}
    finally:
        f.close()
        if tmp:
            os.unlink(tmp)
    if feats.ndim == 3 and feats.shape[0] == 1:  # CLAM sometimes keeps a batch axis
        feats = feats[0]
    if feats.ndim != 2:
        raise InputError(f"slide {name}: `features` must be (N, D), got shape {feats.shape}", item=name)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise InputError(f"slide {name}: `coords` must be (N, 2) level-0 (x, y), got shape {coords.shape}", item=name)
    if len(feats) != len(coords):
        raise InputError(f"slide {name}: {len(feats)} feature rows but {len(coords)} coordinates; the file's "
                         f"`features` and `coords` must describe the same patches", item=name)
    if len(feats) == 0:
        raise InputError(f"slide {name}: the h5 file holds no patches", item=name)
    if not np.isfinite(feats).all():
        raise InputError(f"slide {name}: `features` holds NaN or infinite values", item=name)
    return {"features": feats.astype(np.float32), "coords": coords.astype(np.int64), "attrs": attrs}


def _plain(v):
    if isinstance(v, bytes):
        return v.decode()
    return v.item() if hasattr(v, "item") and np.ndim(v) == 0 else v


def _size_l0(attrs: dict, downsamples, *, name: str) -> tuple[int, int, int]:
    """``(size_l0, patch_px, level)`` from the file's attributes."""
    level = int(attrs.get("patch_level", 0) or 0)
    if "patch_size_level0" in attrs:
        size_l0 = int(attrs["patch_size_level0"])
        return size_l0, int(attrs.get("patch_size", size_l0)), level
    if "patch_size" in attrs:
        if level >= len(downsamples):
            raise InputError(f"slide {name}: patch_level {level} but the slide has {len(downsamples)} level(s)",
                             item=name)
        px = int(attrs["patch_size"])
        return int(round(px * downsamples[level])), px, level
    raise InputError(f"slide {name}: the h5 file says neither patch_size_level0 (TRIDENT) nor patch_size + "
                     f"patch_level (CLAM) on `coords`; mmray needs the patches' level-0 size", item=name)


def slide_rows(data: dict, *, slide: dict, width: int, height: int, mpp_l0: float, downsamples,
               encoder_id: str) -> pa.Table:
    """The bag rows of one slide (``wsi_tiles`` schema) after checking its coordinates against the slide."""
    name = slide["slide_id"]
    size_l0, px, level = _size_l0(data["attrs"], downsamples, name=name)
    x, y = data["coords"][:, 0], data["coords"][:, 1]
    bad = (x < 0) | (y < 0) | (x >= width) | (y >= height)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"slide {name}: {int(bad.sum())} of {len(x)} coordinates fall outside the {width} x {height} "
                         f"slide (level 0), e.g. ({int(x[i])}, {int(y[i])}); are the coords for another slide or "
                         f"not level 0?", item=name)
    n = len(x)
    mpp = float(data["attrs"].get("patch_mpp") or mpp_l0 * size_l0 / max(px, 1))
    cols = {"slide_id": [name] * n, "patient_id": [slide["patient_id"]] * n,
            "event_time": [str(slide["event_time"])] * n, "scale": ["tile"] * n, "x": x, "y": y,
            "tile_px": np.full(n, px), "size_l0": np.full(n, size_l0), "mpp": np.full(n, mpp),
            "region_id": np.full(n, -1), "level": np.full(n, level), "tissue_fraction": np.full(n, np.nan),
            "error": [""] * n}
    table = pa.table({k: pa.array(cols[k]).cast(t) for k, t in META_TYPES.items()})
    table = table.drop_columns(["error"]).append_column("encoder_id", pa.array([encoder_id] * n, pa.string()))
    d = data["features"].shape[1]
    emb = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * d),
                                   pa.array(data["features"].ravel(), pa.float32()))
    return table.append_column("embedding", emb)


def import_features(folder: str, *, store: str, cohort: str, fmt: str, encoder: str, group: str = "wsi_tiles",
                    aggregates: bool = True) -> ImportResult:
    """Import a folder of h5 files (module doc); returns what was written and what failed."""
    from mmray.cohort import load_cohort
    from mmray.ingest import slide_source, slide_resolution
    from mmray.ingest.pseudonym import pseudonymiser_from_env, source_label
    from mmray.ingest.slide_ids import slide_list
    from mmray.store import FeatureStore

    if fmt not in FORMATS:
        raise DataError(f"unknown feature format {fmt!r}; valid: {', '.join(FORMATS)}")
    st = FeatureStore(store)
    pkey = pseudonymiser_from_env()
    manifest = load_cohort(cohort).manifest()
    slides, bad = slide_list(manifest, pkey)
    raw = {r["path"]: r for r in manifest[manifest["modality"] == "wsi"].to_dict("records")}
    files = _find_files(folder)
    result = ImportResult(group=group, version=None, encoder_id=encoder)
    result.failures += [dict(f, stage="features_import") for f in bad]
    scratch = slide_source.new_scratch_dir()
    tables, sources = [], []
    try:
        for s in slides:
            r = raw.get(s["uri"], {})
            stems = [Path(str(s["uri"]).rstrip("/")).name.split(".")[0], str(r.get("item_id") or ""), s["slide_id"]]
            path = next((files[k] for k in stems if k and k in files), None)
            label = source_label(pkey, s["uri"])
            if path is None:
                looked = ", ".join(k + ".h5" for k in dict.fromkeys(stems) if k)
                result.failures.append({"item": label, "patient_id": s["patient_id"], "slide_id": s["slide_id"],
                                        "stage": "features_import",
                                        "reason": f"slide {s['slide_id']}: no h5 file named after it in the folder "
                                                  f"(looked for {looked})"})
                continue
            try:
                data = read_h5(path, name=s["slide_id"])
                handle = slide_source.slide_handle(s["uri"], scratch_dir=scratch)
                w, h = handle.level_dimensions[0]
                mpp = slide_resolution.slide_mpp(handle, name=s["slide_id"], manifest_mpp=s.get("mpp"))
                tables.append(slide_rows(data, slide=s, width=w, height=h, mpp_l0=mpp,
                                         downsamples=handle.level_downsamples, encoder_id=encoder))
                sha = hashlib.sha256(uri_mod.read_bytes(path)).hexdigest()
                sources.append({"uri": source_label(pkey, path), "sha256": sha, "slide_id": s["slide_id"]})
                result.slides[s["slide_id"]] = len(data["coords"])
            except InputError as e:
                result.failures.append({"item": label, "patient_id": s["patient_id"], "slide_id": s["slide_id"],
                                        "stage": "features_import", "reason": str(e).replace(s["uri"], label)})
            except Exception as e:  # OpenSlide / h5py errors on damaged files
                result.failures.append({"item": label, "patient_id": s["patient_id"], "slide_id": s["slide_id"],
                                        "stage": "features_import",
                                        "reason": f"slide {s['slide_id']}: {type(e).__name__}: {e}".replace(s["uri"],
                                                                                                             label)})
    finally:
        slide_source.clean_scratch(scratch)
    if result.failures:
        st.record_failures("features_import", result.failures)
    if not tables:
        return result
    key = {"encoder_id": encoder, "imported": {"format": fmt}}
    with st.open_version(group, kind="bag", bag_key="slide_id", sources=sources,
                         params={"embed_key": key, "encoder": {"name": encoder, "imported_from": fmt}}) as v:
        for t in tables:
            v.write_part(t)
    result.version = result.groups[group] = v.version
    if aggregates and group == "wsi_tiles":
        from mmray.ingest.wsi_aggregates import PATIENTS, SLIDES, update_patient_aggregates, update_slide_aggregates

        sv, _ = update_slide_aggregates(st, tiles_version=v.version, embed_key=key)
        if sv:
            result.groups[SLIDES] = sv
        pv = update_patient_aggregates(st, slide_version=sv or st.latest(SLIDES), force=bool(sv))
        if pv:
            result.groups[PATIENTS] = pv
    return result


def export_features(folder: str, *, store: str, group: str = "wsi_tiles", version: str | None = None,
                    fmt: str = "clam") -> list[str]:
    """One h5 file per bag of ``group`` (tile scale only) in ``folder``; returns the files written."""
    import h5py

    from mmray.store import FeatureStore

    if fmt not in FORMATS:
        raise DataError(f"unknown feature format {fmt!r}; valid: {', '.join(FORMATS)}")
    st = FeatureStore(store)
    version = version or st.latest(group)
    if version is None:
        raise DataError(f"the store {store} has no group {group!r} to export")
    out = []
    local = not uri_mod.is_s3(folder)
    if local:
        Path(folder).mkdir(parents=True, exist_ok=True)
    for bag in st.bag_ids(group, version=version):
        df = st.read_bag(group, bag, version=version)
        if "scale" in df:
            df = df[df["scale"] == "tile"]
        if df.empty:
            continue
        feats = np.stack(df["embedding"].to_numpy()).astype(np.float32)
        coords = np.stack([df["x"].to_numpy(np.int64), df["y"].to_numpy(np.int64)], 1)
        target = os.path.join(folder, f"{bag}.h5") if local else None
        with tempfile.TemporaryDirectory() as tmp:
            path = target or os.path.join(tmp, f"{bag}.h5")
            with h5py.File(path, "w") as f:
                f.create_dataset("features", data=feats)
                c = f.create_dataset("coords", data=coords)
                size_l0 = int(df["size_l0"].iloc[0]) if "size_l0" in df else int(df["tile_px"].iloc[0])
                c.attrs["patch_size_level0"] = size_l0
                c.attrs["patch_size"] = int(df["tile_px"].iloc[0]) if "tile_px" in df else size_l0
                c.attrs["patch_level"] = int(df["level"].iloc[0]) if "level" in df else 0
                if "mpp" in df:
                    c.attrs["patch_mpp"] = float(df["mpp"].iloc[0])
                f.attrs["encoder"] = str(df["encoder_id"].iloc[0]) if "encoder_id" in df else ""
                f.attrs["slide_id"] = str(bag)
                f.attrs["format"] = fmt
            if not local:
                uri_mod.write_bytes(uri_mod.join(folder, f"{bag}.h5"), Path(path).read_bytes())
        out.append(target or uri_mod.join(folder, f"{bag}.h5"))
    return out


def bags_equal(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Whether two tile bags hold the same patches, coordinates and embeddings (row order aside)."""
    cols = ["x", "y", "size_l0"]
    a = a.sort_values(cols).reset_index(drop=True)
    b = b.sort_values(cols).reset_index(drop=True)
    return len(a) == len(b) and all((a[c].to_numpy() == b[c].to_numpy()).all() for c in cols) and \
        np.array_equal(np.stack(a["embedding"].to_numpy()), np.stack(b["embedding"].to_numpy()))

