"""A real headless Chromium (Debian's ``chromium``) driven over the DevTools protocol, for the viewer tests.

Started with the flags a CI box needs (no sandbox as root, no GPU, no
background networking or updates, a throw-away profile), on a free
debugging port it reports in ``DevToolsActivePort``; one page target; a
synchronous ``websockets`` client (in the lock) sends commands and keeps the
events it sees (``Network.responseReceived`` tells which tiles arrived).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         "--hide-scrollbars", "--mute-audio", "--window-size=1200,800", "--remote-debugging-port=0"]


def chromium_binary() -> str:
    """Debian's chromium; in CI (``CI`` set) its absence fails the test instead of skipping it."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed; .ci/run installs it with apt-get (Debian package `chromium`)")
    pytest.skip("chromium is not installed (apt-get install chromium); CI installs it and runs this test")


class Chromium:
    def __init__(self, *, timeout_s: float = 60.0):
        from websockets.sync.client import connect

        self.profile = tempfile.mkdtemp(prefix="mmray-chromium-")
        self.proc = subprocess.Popen([chromium_binary(), *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout_s
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("chromium did not start its DevTools endpoint")
            time.sleep(0.1)
        port = port_file.read_text().split("\n")[0].strip()
        self._id, self.events = 0, []
        browser = connect(f"ws://127.0.0.1:{port}{port_file.read_text().split(chr(10))[1].strip()}",
                          max_size=None, open_timeout=timeout_s)
        self.ws = browser
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        browser.close()
        self.ws = connect(f"ws://127.0.0.1:{port}/devtools/page/{target}", max_size=None, open_timeout=timeout_s)
        self.send("Page.enable")
        self.send("Network.enable")
        self.send("Runtime.enable")

    def send(self, method: str, timeout_s: float = 60.0, **params) -> dict:
        self._id += 1
        mine = self._id
        self.ws.send(json.dumps({"id": mine, "method": method, "params": params}))
        deadline = time.monotonic() + timeout_s
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if msg.get("id") == mine:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def eval(self, expression: str):
        out = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in out:
            raise RuntimeError(f"{expression}: {out['exceptionDetails']}")
        return out["result"].get("value")

    def wait_for(self, expression: str, *, timeout_s: float = 60.0, what: str = ""):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what or expression}; page state: "
                             f"{self.eval('JSON.stringify(window.mmray || null)')}")

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def screenshot(self) -> bytes:
        return base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])

    def responses(self, contains: str) -> list[dict]:
        return [e["params"]["response"] for e in self.events
                if e.get("method") == "Network.responseReceived" and contains in e["params"]["response"]["url"]]

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                self.ws.close()
        finally:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
            shutil.rmtree(self.profile, ignore_errors=True)
