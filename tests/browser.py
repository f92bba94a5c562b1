"""A headless Chromium driven over the DevTools protocol on a pipe, for the browser tests.

Debian's ``chromium`` package, started with ``--remote-debugging-pipe``: it reads
NUL-terminated JSON commands on file descriptor 3 and writes replies and events on 4.
No driver, nothing downloaded; ``find_chromium`` says where the binary is (or None).
Pages are polled (``wait_for``) until the app has rendered, never waited on by sleeps.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(RuntimeError):
    pass


def _high(fd: int) -> int:
    """``fd`` moved to a number >= 10, so the child's dup2 onto 3 and 4 cannot clobber it."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class Browser:
    """One headless Chromium and one page (tab) in it."""

    def __init__(self, binary: str, *, width: int = 1400, height: int = 1000, log=None):
        self.profile = tempfile.mkdtemp(prefix="clusterprobe-chromium-")
        to_chrome_r, self._to_chrome = (_high(fd) for fd in os.pipe())
        self._from_chrome, from_chrome_w = (_high(fd) for fd in os.pipe())

        def child_fds():  # runs in the child before exec: the protocol's fds 3 and 4
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        argv = [
            binary,
            "--headless",
            "--no-sandbox",  # tests run as root in containers, where the sandbox cannot start
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--remote-debugging-pipe",
            f"--user-data-dir={self.profile}",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log or subprocess.DEVNULL,
            stderr=log or subprocess.DEVNULL,
            close_fds=False,  # keep 3 and 4; every other fd of ours is close-on-exec
            preexec_fn=child_fds,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        self.session = None
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    # --- the protocol -------------------------------------------------------------------

    def send(self, method: str, timeout: float = 60.0, session: str | None = None, **params):
        """One command, to the page (or to ``session``: a frame attached by `frame`)."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        session = session or self.session
        if session is not None and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("no reply from chromium in time")
            ready, _, _ = select.select([self._from_chrome], [], [], left)
            if ready:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    raise BrowserError(f"chromium closed the pipe (exit {self.proc.poll()})")
                self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(raw)

    # --- pages ----------------------------------------------------------------------------

    def goto(self, url: str) -> None:
        result = self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise BrowserError(f"{url}: {result['errorText']}")

    def evaluate(self, expression: str, session: str | None = None):
        result = self.send(
            "Runtime.evaluate",
            session=session,
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0, what: str = "", session=None):
        """Poll ``expression`` until it is truthy; its value. A timeout says what the page
        showed instead."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression, session)
            except BrowserError:
                value = None  # the page is between documents
            if value:
                return value
            if time.monotonic() > deadline:
                text = self.evaluate("document.body ? document.body.innerText : ''") or ""
                raise BrowserError(
                    f"timed out waiting for {what or expression!r}; the page shows: {text[:600]!r}"
                )
            time.sleep(0.25)

    def frame(self, url_prefix: str, timeout: float = 60.0) -> str:
        """A session in the page's out-of-process iframe whose URL starts with ``url_prefix``
        (a sandboxed frame is another process: the page's own scripts cannot look in)."""
        deadline = time.monotonic() + timeout
        while True:
            for target in self.send("Target.getTargets")["targetInfos"]:
                if target["type"] == "iframe" and target["url"].startswith(url_prefix):
                    return self.send(
                        "Target.attachToTarget", targetId=target["targetId"], flatten=True
                    )["sessionId"]
            if time.monotonic() > deadline:
                raise BrowserError(f"no iframe at {url_prefix}...")
            time.sleep(0.25)

    def text(self) -> str:
        return self.evaluate("document.body.innerText")

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        params = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params["clip"] = {
                "x": 0,
                "y": 0,
                "width": size["width"],
                "height": min(size["height"], 6000),
                "scale": 1,
            }
        data = self.send("Page.captureScreenshot", **params)["data"]
        path = Path(path)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (BrowserError, OSError):
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)
        for fd in (self._to_chrome, self._from_chrome):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
