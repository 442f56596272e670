"""Drill: SIGKILL the Ray worker processes of the WSI tile pipeline while they work.

``mmray ingest`` embeds a tiny synthetic cohort's slides.  During the run the test kills a worker
process while it runs a read task (``MapBatches(read_pixels)``), then an encoder actor while it
embeds a batch (``MapWorker(MapBatches(TileEncoder)).submit``).  Ray retries the lost read task
(Ray Data tasks retry system failures) and restarts the actor and its task (Ray Data's actor pool:
``max_restarts=-1``, ``max_task_retries=-1``).  Every slide lands exactly once in ``wsi_tiles``:
each planned tile and region once, no duplicate ``(slide_id, scale, x, y)``, and each embedding is
the one this process computes for the same pixels.
"""

from __future__ import annotations

import time
import types

import numpy as np
import pytest
import ray
from ray_drills import Killer, ray_processes, wait_for

from mmray.cohort import load_cohort
from mmray.config import load_config
from mmray.features.encoders import resolve
from mmray.features.tile_pipeline import Source, TileEncoder, plan_columns, read_pixels
from mmray.ingest.run import IngestConfig, run_ingest
from mmray.ingest.run import plan as ingest_plan
from mmray.ingest.slide_ids import slide_list
from mmray.store import FeatureStore
from mmray.synth.cohort import write_cohort

pytestmark = [pytest.mark.integration, pytest.mark.drill]
# 256-px tiles at 0.5 mpp (~30 with tissue per tiny slide) and 1024-px regions, a small encoder:
# enough read tasks (8 tiles each) and encoder batches (16) to kill one of each mid-way.
ARGS = ["wsi.encoder.name=resnet10t", "wsi.encoder.input_px=64", "wsi.target_mpp=0.5", "wsi.tile_px=256",
        "wsi.region_px=1024", "wsi.encoder.batch_size=16", "wsi.read.batch_size=8", "wsi.progress_interval_s=0"]
READ_TASK = "ray::MapBatches(read_pixels)"
ENCODER = "ray::MapWorker(MapBatches(TileEncoder))"
KEY = ["slide_id", "scale", "x", "y"]


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def _running(title: str):
    """``(pid, title)`` of a process titled exactly ``title`` (running that task or actor call), or None."""
    return next(((pid, t) for pid, t in ray_processes(title).items() if t == title), None)


def test_sigkill_of_a_read_worker_and_an_encoder_actor_loses_and_duplicates_no_tile(tmp_path):
    t_start = time.perf_counter()
    cohort = tmp_path / "cohort"
    write_cohort(cohort, patients=5, seed=2, profile="tiny", corrupt=0)
    cfg = load_config(IngestConfig, None, [f"cohort={cohort / 'cohort.yaml'}", f"store={tmp_path / 'store'}",
                                           "modalities=[wsi]", *ARGS])

    read_kill = Killer(lambda: _running(READ_TASK), timeout_s=600, what="a worker running a read task")

    def encoder_victim():
        if read_kill.killed_at is None:
            return None
        return _running(f"{ENCODER}.submit")  # an actor embedding a batch right now

    def encoder_restarted():
        t = time.monotonic()
        pid = wait_for(lambda: next(iter(ray_processes(ENCODER)), None), timeout_s=300,
                       what="a new encoder actor process")
        return pid, time.monotonic() - t

    encoder_kill = Killer(encoder_victim, timeout_s=600, what="an encoder actor embedding a batch",
                          after_kill=encoder_restarted)
    read_kill.start()
    encoder_kill.start()
    (report,) = run_ingest(cfg, progress=lambda line: None)
    read_kill.check()
    encoder_kill.check()
    new_encoder, restart_s = encoder_kill.after
    assert new_encoder != encoder_kill.pid

    # the run finished as if nothing happened: every slide done, nothing failed
    store = FeatureStore(tmp_path / "store")
    ctx = types.SimpleNamespace(cohort=load_cohort(cohort / "cohort.yaml"), patient_key=lambda p: p)
    slides, bad = slide_list(ctx.cohort.manifest(), ctx.patient_key)
    assert not bad and len(slides) >= 5
    assert (report.n_done, report.failures) == (len(slides), [])
    assert store.bag_ids("wsi_tiles") == sorted(s["slide_id"] for s in slides)

    # exactly the plan, once: the same planning function the pipeline ran, in this process
    tiles = store.read_table("wsi_tiles")
    assert not tiles.duplicated(KEY).any()
    ((_, _, wsi),) = ingest_plan(cfg, ctx.cohort)  # the WsiConfig the run used
    source = Source(str(tmp_path / "scratch"))
    planned = {s["slide_id"]: plan_columns(s, spec=wsi.tiling(), source=source) for s in slides}
    for sid, plan in planned.items():
        assert set(plan["error"]) == {""}, plan["error"][:1]
        got = tiles[tiles["slide_id"] == sid]
        assert sorted(zip(got["scale"], got["x"], got["y"])) == sorted(zip(plan["scale"], plan["x"], plan["y"]))
    n_planned = sum(len(p["x"]) for p in planned.values())
    assert len(tiles) == n_planned

    # and each embedding is this process's embedding of the same pixels (retried reads, restarted encoder)
    encoder = TileEncoder(resolve(wsi.encoder), device="cpu", cpu_threads=1)
    worst = 0.0
    for sid, plan in planned.items():
        pixels = read_pixels(plan, canvas_px=wsi.tile_px, source=source)["pixels"]
        mine = encoder.embed(pixels)
        got = tiles[tiles["slide_id"] == sid].set_index(["scale", "x", "y"])
        stored = np.stack([got.loc[(sc, x, y), "embedding"] for sc, x, y in zip(plan["scale"], plan["x"], plan["y"])])
        worst = max(worst, float(np.abs(stored - mine).max()))
    assert worst < 1e-4
    # the aggregates the rest of mmray reads: one row per slide
    assert len(store.read_table("wsi_slide")) == len(slides)
    print(f"\nwsi drill: {len(slides)} slides, {n_planned} planned tiles+regions; killed pid "
          f"{read_kill.pid} while it ran {read_kill.info!r} and encoder actor pid {encoder_kill.pid} mid-batch (a new "
          f"actor, pid {new_encoder}, came up {restart_s:.1f} s later); wsi_tiles holds {len(tiles)} rows, 0 "
          f"duplicates, 0 missing, 0 failed slides; max |embedding - in-process embedding| {worst:.1e}; "
          f"ingest {report.seconds:.0f} s, test {time.perf_counter() - t_start:.0f} s")
