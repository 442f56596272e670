"""Console vs log file: mmray's lines and warnings on the console, libraries' INFO in the file only;
rate/ETA progress lines at the interval and at the end."""

from __future__ import annotations

import logging

from mmray import logs
from mmray.progress import RateLog


def _reset():
    root = logging.getLogger()
    for h in logs._state["handlers"]:
        root.removeHandler(h)
        h.close()
    logs._state.update(verbose=False, file=None, handlers=[], raised=[])
    logs._quiet_env(True)  # take back the environment settings configure() made


def test_library_info_goes_to_the_file_only_and_verbose_brings_it_back(tmp_path, capsys):
    import mlflow  # noqa: F401  (MLflow installs its own console handler on "mlflow" at import)

    # a Ray-style logger: its own console handler, no propagation (as ray.data and ray.serve set up theirs)
    ray_like = logging.getLogger("ray.mmray_test")
    ray_console = logging.StreamHandler(__import__("sys").stderr)
    ray_like.addHandler(ray_console)
    ray_like.propagate = False
    try:
        logs.configure(verbose=False, log_file=tmp_path / "run.log")
        logging.getLogger("mmray.ingest").info("wsi: 3/4 slides planned")
        logging.getLogger("mlflow.store").info("creating tables")
        logging.getLogger("ray.mmray_test").info("Running Dataset: plan table")
        logging.getLogger("ray.mmray_test").warning("object store full")
        for h in logging.getLogger().handlers + ray_like.handlers:
            h.flush()
        console = capsys.readouterr().err
        full = (tmp_path / "run.log").read_text()
        assert "wsi: 3/4 slides planned" in console and "object store full" in console
        assert "creating tables" not in console and "plan table" not in console
        assert all(s in full for s in ("wsi: 3/4", "creating tables", "plan table", "object store full"))
        assert logs.log_file() == str(tmp_path / "run.log")

        logs.configure(verbose=True, log_file=None)  # -v: everything on the console again
        logging.getLogger("mlflow.store").info("creating tables again")
        ray_like.info("plan table again")
        err = capsys.readouterr().err
        assert "creating tables again" in err and "plan table again" in err
    finally:
        ray_like.handlers.clear()
        _reset()


def test_rate_log_lines_come_at_the_interval_and_at_the_end(caplog):
    now = [100.0]
    progress = RateLog(logging.getLogger("mmray.test"), "ct", 5, unit="studies", interval_s=10, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="mmray.test")
    for t, failed in ((2, False), (4, True), (12, False), (14, False), (20, False)):
        now[0] = 100.0 + t
        progress.tick(failed=failed)
    lines = [r.getMessage() for r in caplog.records]
    # 12 s: the first line (3 done in 12 s -> 0.25 /s, 2 left -> ETA 8 s); 20 s: the last one
    assert lines == ["ct: 3/5 studies done, 1 failed (0.2 /s, ETA 0:00:08)",
                     "ct: 5/5 studies done, 1 failed (0.2 /s, ETA 0:00:00)"]


def test_printed_lines_go_to_the_log_file_and_quiet_env_is_set_unless_verbose(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_LOGGING_LEVEL", raising=False)
    try:
        logs.configure(verbose=False, log_file=tmp_path / "run.log")
        assert __import__("os").environ["MLFLOW_LOGGING_LEVEL"] == "WARNING"  # inherited by Ray workers
        with logs.printed_to_log("ray.tune.output"):
            print("+----------------------+\n| Configuration for experiment |")
            print("View detailed results here: /tmp/x", end="")
        print("after the block")
        for h in logging.getLogger().handlers:
            h.flush()
        out = capsys.readouterr().out
        full = (tmp_path / "run.log").read_text()
        assert "View detailed results" not in out and "after the block" in out
        assert "ray.tune.output: View detailed results here: /tmp/x" in full and "Configuration for experiment" in full
        logs.configure(verbose=True, log_file=None)
        assert "MLFLOW_LOGGING_LEVEL" not in __import__("os").environ  # ours is taken back with -v
        with logs.printed_to_log("ray.tune.output"):
            print("table shown")
        assert "table shown" in capsys.readouterr().out
    finally:
        _reset()
