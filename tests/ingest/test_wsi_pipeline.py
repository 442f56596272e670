"""The Ray Data tile pipeline: pixels at the right place and level, failures as rows, the sink's guarantees."""

from __future__ import annotations

import os

import numpy as np
import openslide
import pytest
import ray  # a hard dependency: a broken Ray fails here, never skips
from PIL import Image
from wsi_testdata import break_tile, tiny_slides  # noqa: E402

from mmray.features.encoders import EncoderConfig, resolve  # noqa: E402
from mmray.features.tile_pipeline import ReadConfig, Source, embedding_dataset, tile_dataset  # noqa: E402
from mmray.features.tile_sink import TileEmbeddingSink  # noqa: E402
from mmray.features.tiling import TilingSpec  # noqa: E402
from mmray.store import FeatureStore  # noqa: E402

READ = ReadConfig(batch_size=8)

# starts Ray and the S3 server (module fixtures): out of `make test-fast`
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def ray_session(s3_server):
    s3 = {"AWS_ENDPOINT_URL": s3_server.endpoint, "AWS_ACCESS_KEY_ID": s3_server.access_key,
          "AWS_SECRET_ACCESS_KEY": s3_server.secret_key, "AWS_DEFAULT_REGION": s3_server.region}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": s3})  # workers reach the test S3 server
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    return tiny_slides(tmp_path_factory.mktemp("wsi_pipeline"), n=2)


def rows_of(slide: dict) -> dict:
    return {"slide_id": slide["slide_id"], "patient_id": slide["patient_id"], "event_time": "2020-01-01",
            "uri": slide["path"]}


@pytest.mark.parametrize("target_mpp, level, read_px", [(0.5, 0, 256), (1.0, 0, 512), (2.0, 1, 256)])
def test_tile_pixels_are_openslide_read_region_at_the_chosen_level(slides, tmp_path, target_mpp, level, read_px):
    spec = TilingSpec(target_mpp=target_mpp, tile_px=256, region_px=512)
    ds = tile_dataset([rows_of(slides[0])], spec=spec, read=READ, source=Source(str(tmp_path)))
    seen = {"tile": 0, "region": 0}
    with openslide.OpenSlide(slides[0]["path"]) as s:
        for row in ds.iter_rows():
            assert row["error"] == "" and row["pixels"].shape == (256, 256, 3) and row["pixels"].dtype == np.uint8
            seen[row["scale"]] += 1
            if row["scale"] == "tile":
                assert (row["level"], row["size_l0"], row["tile_px"]) == (level, 256 * target_mpp / 0.5, 256)
                assert row["x"] % row["size_l0"] == 0 and row["y"] % row["size_l0"] == 0
            size = read_of(row, read_px)
            rgba = np.asarray(s.read_region((int(row["x"]), int(row["y"])), int(row["level"]), (size, size)))
            rgb = rgba[..., :3].copy()
            if row["scale"] == "tile":
                assert (rgba[..., 3] == 255).all()  # tiles lie inside the slide
            else:
                rgb[rgba[..., 3] == 0] = 255  # a region's part outside the slide reads as white
            if rgb.shape[0] != 256:
                rgb = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((256, 256),
                                                                                  Image.Resampling.BILINEAR))
            np.testing.assert_array_equal(row["pixels"], rgb)
    assert seen["tile"] >= 2 and seen["region"] >= 1


def read_of(row: dict, read_px: int) -> int:
    """The read size of a row: tiles as planned; a region its level-0 size at its own (coarser) level."""
    if row["scale"] == "tile":
        return read_px
    ds = (1.0, 4.0, 16.0)[int(row["level"])]
    return int(round(row["size_l0"] / ds))


def test_failed_slides_travel_as_rows_and_never_reach_the_store(slides, tmp_path):
    broken = break_tile(slides[1]["path"], tmp_path / "broken.tiff")
    truncated = tmp_path / "truncated.tiff"
    truncated.write_bytes(open(slides[1]["path"], "rb").read()[:50_000])
    items = [rows_of(slides[0]), {**rows_of(slides[1]), "slide_id": "BROKEN", "uri": str(broken)},
             {**rows_of(slides[1]), "slide_id": "TRUNC", "uri": str(truncated)},
             {**rows_of(slides[1]), "slide_id": "GONE", "uri": str(tmp_path / "gone.svs")}]
    spec = TilingSpec(target_mpp=1.0, tile_px=128, region_px=512)
    encoder = resolve(EncoderConfig(name="resnet10t", input_px=32))
    ds = embedding_dataset(items, spec=spec, read=READ, source=Source(str(tmp_path / "scratch")), encoder=encoder,
                           cfg=EncoderConfig(name="resnet10t", input_px=32, batch_size=16))
    store = FeatureStore(tmp_path / "store")
    sink = TileEmbeddingSink(store, "wsi_tiles", params={"run": 1}, rows_per_file=10_000)
    ds.write_datasink(sink)
    assert "read_pixels)->" not in ds.stats()  # reads stay in CPU tasks, not fused into the encoder actors
    assert sink.version == "v0001" and store.bag_ids("wsi_tiles") == [slides[0]["slide_id"]]
    assert set(sink.failures) == {"BROKEN", "TRUNC", "GONE"}
    assert "reading the tile at x=1024, y=768 failed" in sink.failures["BROKEN"][1]
    assert "Not a JPEG file" in sink.failures["BROKEN"][1]
    assert "OpenSlide cannot open" in sink.failures["TRUNC"][1] and "truncated" in sink.failures["TRUNC"][1]
    assert "does not exist" in sink.failures["GONE"][1]
    table = store.read_table("wsi_tiles")  # whole-file readers see only the good slide
    good = slides[0]["slide_id"]
    assert set(table["slide_id"]) == {good} and len(table) == sink.rows_per_slide[good]
    emb = np.stack(table["embedding"].to_numpy())
    assert emb.shape[1] == 512 and emb.dtype == np.float32 and np.isfinite(emb).all()
    assert set(table["encoder_id"]) == {"resnet10t@random-seed0"}
    assert set(table["scale"]) == {"tile", "region"}
    # the failed slides' rows were written, then removed from the one part before the commit
    assert sorted(os.listdir(tmp_path / "store" / "wsi_tiles" / "v0001")) == [
        "_bag_index.parquet", "_manifest.json", "part-00000.parquet"]


def test_slides_on_s3_read_like_local_ones_and_scratch_is_cleaned(slides, s3_env, tmp_path):
    from mmray import uri
    from mmray.ingest.slide_source import clean_scratch

    remote = f"{s3_env}/slides/{os.path.basename(slides[0]['path'])}"
    uri.write_bytes(remote, open(slides[0]["path"], "rb").read())
    spec = TilingSpec(target_mpp=1.0, tile_px=128, region_px=512)
    scratch = str(tmp_path / "scratch" / "run")

    def pixels(u):
        ds = tile_dataset([{**rows_of(slides[0]), "uri": u}], spec=spec, read=READ, source=Source(scratch))
        return {(r["scale"], r["x"], r["y"]): r["pixels"] for r in ds.iter_rows()}

    local, s3 = pixels(slides[0]["path"]), pixels(remote)
    assert len(local) >= 10 and local.keys() == s3.keys()
    for k in local:
        np.testing.assert_array_equal(local[k], s3[k])
    assert os.listdir(scratch)  # downloaded once into the run's scratch folder
    clean_scratch(scratch)
    assert not os.path.exists(scratch)
