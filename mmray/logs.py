"""Console logging a person can read, and the full log in a file.

The console shows mmray's own lines (progress with rates and ETAs, stage summaries) and every library's
warnings and errors.  Libraries' INFO chatter (Ray Data's per-dataset execution plans and progress tables,
Ray's start-up banners, Serve's controller lines, Tune's trial tables) goes to the log file only; ``-v``
brings all of it back to the console (and DEBUG lines with it).

Ray installs its own console handlers on its loggers (``ray``, ``ray.data``, ``ray.serve``, ...; they do
not propagate to the root logger) and does so lazily, when a sub-library is imported or started, so
:func:`quiet_ray_consoles` runs again after each of those points (``init_ray``, the tile pipeline,
``serve.start``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import sys
import tempfile
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_DIR_ENV = "MMRAY_LOG_DIR"
# libraries whose INFO lines are per-file chatter even in the log file
NOISY = ("highdicom", "pydicom", "radiomics", "numexpr")
# libraries that install their own non-propagating console handlers (Ray's loggers; MLflow's "mlflow")
OWN_CONSOLE = ("ray", "mlflow")

# environment settings that quiet libraries in this process and in the processes it starts (Ray workers,
# Serve replicas inherit a local cluster's environment); set unless verbose, and never over a user's value
QUIET_ENV = {"MLFLOW_LOGGING_LEVEL": "WARNING"}  # MLflow's "Creating initial MLflow database tables..." etc.

_state: dict = {"verbose": False, "file": None, "handlers": [], "raised": [], "env": []}


class ConsoleFilter(logging.Filter):
    """mmray's lines at INFO and up; other loggers' at WARNING and up (everything when verbose)."""

    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose or record.levelno >= logging.WARNING:
            return True
        return record.name == "mmray" or record.name.startswith(("mmray.", "__main__"))


def default_log_file(command: str) -> Path:
    """``$MMRAY_LOG_DIR/<command>-<UTC time>-<pid>.log`` (default folder: ``<tmp>/mmray-logs``)."""
    folder = Path(os.environ.get(LOG_DIR_ENV) or Path(tempfile.gettempdir()) / "mmray-logs")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return folder / f"{command}-{stamp}-{os.getpid()}.log"


def configure(*, verbose: bool, log_file: Path | None) -> None:
    """Root logging for a CLI run: a filtered console handler (stderr) and, when given, the full log file."""
    root = logging.getLogger()
    for h in _state.get("handlers", []):  # configured before in this process (tests call main() often)
        root.removeHandler(h)
        h.close()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    console.addFilter(ConsoleFilter(verbose))
    root.addHandler(console)
    file_handler = None
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            file_handler = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as e:  # an unwritable log folder must not stop the command
            root.warning("cannot write the log file %s (%s); set %s to a writable folder", log_file, e,
                         LOG_DIR_ENV)
        else:
            file_handler.setFormatter(logging.Formatter(FORMAT))
            root.addHandler(file_handler)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _quiet_env(verbose)
    _state.update(verbose=verbose, file=file_handler, handlers=[console] + ([file_handler] if file_handler else []))
    quiet_ray_consoles()


def _quiet_env(verbose: bool) -> None:
    for name in _state["env"]:  # ours from an earlier configure() in this process
        os.environ.pop(name, None)
    _state["env"] = []
    if verbose:
        return
    for name, value in QUIET_ENV.items():
        if name not in os.environ:
            os.environ[name] = value
            _state["env"].append(name)


class _LinesToLog:
    """A text stream that sends each line written to it to ``logger`` at INFO (the log file, not the console)."""

    def __init__(self, logger: logging.Logger):
        self.logger, self._buffer = logger, ""

    def write(self, text: str) -> int:
        self._buffer += text
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            if line.strip():
                self.logger.info("%s", line.rstrip())
        return len(text)

    def flush(self) -> None:
        if self._buffer.strip():
            self.logger.info("%s", self._buffer.rstrip())
        self._buffer = ""


@contextlib.contextmanager
def printed_to_log(name: str):
    """Within the block, what libraries ``print`` (Ray Tune's experiment table and "View detailed results
    here" lines) goes to the log file as logger ``name``'s INFO lines; with ``-v`` it stays on stdout."""
    if _state["verbose"]:
        yield
        return
    stream = _LinesToLog(logging.getLogger(name))
    try:
        with contextlib.redirect_stdout(stream):
            yield
    finally:
        stream.flush()


def quiet_ray_consoles() -> None:
    """Raise Ray's (and MLflow's) own console handlers to WARNING (unless verbose) and give those loggers
    the log file."""
    if _state["verbose"]:  # -v after a quiet run in this process: give the raised handlers back
        for h in _state["raised"]:
            h.setLevel(logging.NOTSET)
        _state["raised"] = []
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name in OWN_CONSOLE or name.startswith(tuple(p + "." for p in OWN_CONSOLE))]
    for lg in loggers:
        if not lg.handlers:
            continue
        for h in lg.handlers:
            if _is_console(h) and not _state["verbose"] and h.level < logging.WARNING:
                h.setLevel(logging.WARNING)
                _state["raised"].append(h)
        if _state["file"] is not None and not lg.propagate and _state["file"] not in lg.handlers:
            lg.addHandler(_state["file"])


def _is_console(handler: logging.Handler) -> bool:
    # a terminal stream, or MLflow's wrapper around stderr (MlflowLoggingStream); never pytest's capture
    # handlers or a file
    if not isinstance(handler, logging.StreamHandler) or isinstance(handler, logging.FileHandler):
        return False
    stream = getattr(handler, "stream", None)
    return (stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
            or type(stream).__name__ == "MlflowLoggingStream")


def log_file() -> str | None:
    """The full log's path in this process (``None``: not configured)."""
    return _state["file"].baseFilename if _state["file"] is not None else None


def tune_verbosity() -> int:
    """Ray Tune's ``verbose``: its trial tables only with ``-v``."""
    return 1 if _state["verbose"] else 0
