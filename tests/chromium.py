"""Headless Chromium driven over the Chrome DevTools protocol, for the viewer's browser tests.

The system's `chromium` (Debian's package; scripts/install.sh installs it) is started
with a throwaway profile and `--remote-debugging-port=0`; the port it picked is read
from the `DevToolsActivePort` file it writes, and its one page is driven through a
websocket (`websockets`): navigate, evaluate JavaScript, click with real mouse events,
type, take screenshots. No tool that downloads its own browser is involved.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
)
MISSING = ("chromium is not installed: the viewer's browser tests drive Debian's headless chromium "
           "(run scripts/install.sh, or apt-get install -y chromium)")


class ChromiumMissing(RuntimeError):
    """No `chromium` executable on PATH."""


def find_chromium() -> str:
    """The path of the `chromium` executable; ChromiumMissing (with how to install it) if there is none."""
    path = shutil.which("chromium")
    if path is None:
        raise ChromiumMissing(MISSING)
    return path


class Chromium:
    """One headless Chromium with one page. Use as a context manager; `close()` ends the process."""

    def __init__(self, width: int = 1280, height: int = 900, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._connection = contextlib.ExitStack()  # closes the websocket
        self._profile = Path(tempfile.mkdtemp(prefix="agentflow-chromium-"))
        self._log = (self._profile / "stderr.log").open("wb")
        self.process = subprocess.Popen(
            [find_chromium(), *FLAGS, f"--user-data-dir={self._profile}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=self._log,
        )
        try:
            self.ws = self._connect()
            self.send("Page.enable")
            self.send("Runtime.enable")
            self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        except BaseException:
            self.close()
            raise

    def _connect(self) -> ClientConnection:
        port_file = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while not port_file.is_file() or not port_file.read_text().strip():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self._profile / "stderr.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"chromium did not start (exit {self.process.poll()}):\n{log}")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=self.timeout) as response:
            targets = json.load(response)
        page = next(t for t in targets if t.get("type") == "page")
        return self._connection.enter_context(
            connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=self.timeout))

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._connection.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    # -- the protocol ----------------------------------------------------------------
    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result; events that arrive meanwhile go to `events`."""
        call_id = next(self._ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=self.timeout))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def wait_event(self, method: str) -> dict[str, Any]:
        """The params of the next `method` event (already received ones first)."""
        for i, event in enumerate(self.events):
            if event["method"] == method:
                return self.events.pop(i)["params"]
        deadline = time.monotonic() + self.timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
            if message.get("method") == method:
                return message["params"]
            if "method" in message:
                self.events.append(message)

    # -- page actions ----------------------------------------------------------------
    def open(self, path: str | Path) -> None:
        """Navigate to a local file and wait for its load event."""
        self.events.clear()
        self.send("Page.navigate", url=Path(path).resolve().as_uri())
        self.wait_event("Page.loadEventFired")

    def eval(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited); RuntimeError if it throws."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise RuntimeError(f"{expression!r} threw: {details.get('exception', {}).get('description', details)}")
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """Scroll `selector`'s first match into view and click its centre with the mouse."""
        box = self.eval(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return {x: r.x + r.width / 2, y: r.y + r.height / 2}; })()"
        )
        if box is None:
            raise LookupError(f"no element matches {selector!r}")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"], button="left", clickCount=1)

    def type(self, selector: str, text: str) -> None:
        """Click into `selector` and type `text` as keyboard input."""
        self.click(selector)
        self.send("Input.insertText", text=text)

    def screenshot(self, path: str | Path, *, full_page: bool = False) -> Path:
        """A PNG of the viewport (or of the whole page) written to `path`."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.eval("({w: document.documentElement.scrollWidth, h: document.documentElement.scrollHeight})")
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": size["w"], "height": size["h"], "scale": 1})
        data = self.send("Page.captureScreenshot", **params)["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
