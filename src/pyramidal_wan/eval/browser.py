"""Headless Chromium through the DevTools protocol on a pipe: check a local HTML page and screenshot it.

No package is needed beyond the browser: Chromium is started with `--remote-debugging-pipe`, which reads
protocol commands from file descriptor 3 and writes replies and events to descriptor 4, each a JSON object
ended by a NUL byte. `check_page` loads a page and reports what did not resolve (images, videos, local
links) and every console error, uncaught exception, failed request and browser log error; `screenshot`
captures the whole page (Chromium's own `--screenshot` flag captures only the window).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from pyramidal_wan.errors import InputError
from pyramidal_wan.utils.io import atomic_path

CHROMIUM = "/usr/bin/chromium"
# The network is closed and the profile is thrown away: no sandbox (root in a container), no GPU, and none
# of the background services that would try to reach the network.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--mute-audio",
)
INSTALL_HINT = "apt-get install -y chromium (Debian) or set PYRAMIDAL_WAN_CHROMIUM to a Chromium binary"

# Waits for every image and video of the page; returns what each resolved to.
_PAGE_STATE_JS = """
(async () => {
  const settle = (el, events) => new Promise(done => {
    for (const e of events) el.addEventListener(e, done, {once: true});
    setTimeout(done, 10000);
  });
  const images = [...document.images];
  await Promise.all(images.map(i => i.complete ? null : settle(i, ['load', 'error'])));
  const videos = [...document.querySelectorAll('video')];
  await Promise.all(videos.map(v => v.readyState >= 1 || v.error ? null
                                    : settle(v, ['loadedmetadata', 'error'])));
  return {
    title: document.title,
    images: images.map(i => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0})),
    videos: videos.map(v => ({src: v.currentSrc || v.src, ok: !v.error && v.readyState >= 1})),
    links: [...document.querySelectorAll('a[href]')].map(a => a.href),
  };
})()
"""


def find_chromium() -> str | None:
    """The Chromium binary: $PYRAMIDAL_WAN_CHROMIUM, /usr/bin/chromium, or `chromium` on the PATH."""
    for candidate in (os.environ.get("PYRAMIDAL_WAN_CHROMIUM"), CHROMIUM, shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass
class PageCheck:
    """What a headless browser saw on one page."""

    title: str
    images: list[dict]  # {"src", "ok"} per <img>
    videos: list[dict]  # {"src", "ok"} per <video>
    links: list[str]  # every <a href>
    console_errors: list[str] = field(default_factory=list)  # console.error, exceptions, log errors
    failed_requests: list[str] = field(default_factory=list)

    def broken_links(self) -> list[str]:
        """Local (file://) links whose target does not exist."""
        return [
            u for u in self.links if u.startswith("file:") and not Path(unquote(urlparse(u).path)).exists()
        ]

    def problems(self) -> list[str]:
        """One line per problem; empty when the page is clean."""
        return (
            [f"image did not load: {i['src']}" for i in self.images if not i["ok"]]
            + [f"video did not load: {v['src']}" for v in self.videos if not v["ok"]]
            + [f"broken link: {u}" for u in self.broken_links()]
            + [f"console: {m}" for m in self.console_errors]
            + [f"request failed: {r}" for r in self.failed_requests]
        )


class DevToolsPipe:
    """A headless Chromium and one DevTools-protocol connection to it over a pipe (a context manager)."""

    def __init__(self, executable: str | None = None, timeout: float = 60.0):
        executable = executable or find_chromium()
        if executable is None:
            raise InputError(f"no Chromium found; {INSTALL_HINT}")
        self.timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="pyramidal-wan-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_pipe_fds():  # in the child: the protocol pipe must be descriptors 3 (in) and 4 (out)
            # Copy both ends above 4 first: one may already be 3 or 4, and dup2 onto itself would leave it
            # close-on-exec.
            ends = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w)]
            os.dup2(ends[0], 3)
            os.dup2(ends[1], 4)

        args = [executable, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}", "--remote-debugging-pipe"]
        self.process = subprocess.Popen(
            [*args, "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,  # Python's own descriptors are not inheritable; 3 and 4 (dup2'd) are
            preexec_fn=wire_pipe_fds,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def __enter__(self) -> DevToolsPipe:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the browser (politely, then by signal) and remove its throw-away profile."""
        if self.process.poll() is None:
            with contextlib.suppress(InputError, OSError):
                self.send("Browser.close", timeout=5.0)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for fd in (self._to_browser, self._from_browser):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self._profile, ignore_errors=True)

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise InputError(f"Chromium did not answer within {self.timeout:g} s")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise InputError(f"Chromium exited (status {self.process.poll()}) before answering")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout=None) -> dict:
        """Send one command and return its result; events that arrive meanwhile go to `self.events`."""
        self._next_id += 1
        command = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            command["sessionId"] = session
        os.write(self._to_browser, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            message = self._read_message(deadline)
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise InputError(f"Chromium: {method} failed: {message['error'].get('message')}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, session: str | None = None) -> dict:
        """Wait for (or find among those already received) the first event `method` of `session`."""
        deadline = time.monotonic() + self.timeout
        seen = 0
        while True:
            for event in self.events[seen:]:
                if event.get("method") == method and event.get("sessionId") == session:
                    return event
            seen = len(self.events)
            self.events.append(self._read_message(deadline))

    def open_page(self, url: str, width: int = 1280, height: int = 800) -> str:
        """Open `url` in a new tab of the given viewport size, wait for its load event; return the session."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        self.send("Emulation.setDeviceMetricsOverride", metrics, session=session)
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired", session)
        return session

    def evaluate(self, expression: str, session: str):
        """The JSON value of a JavaScript expression (promises are awaited)."""
        params = {"expression": expression, "awaitPromise": True, "returnByValue": True}
        result = self.send("Runtime.evaluate", params, session=session)
        if "exceptionDetails" in result:
            raise InputError(f"page script failed: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")


def _file_url(path: str | os.PathLike) -> str:
    path = Path(path).resolve()
    if not path.is_file():
        raise InputError(f"{path} is not a file")
    return path.as_uri()


def _errors(events: list[dict], session: str) -> tuple[list[str], list[str]]:
    """(console and log errors, failed requests) among the events of one page."""
    errors, failed, urls = [], [], {}
    for event in events:
        if event.get("sessionId") != session:
            continue
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            errors.append(details.get("exception", {}).get("description") or details.get("text", ""))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            entry = params["entry"]
            errors.append(f"{entry.get('text')} ({entry.get('url', '')})")
        elif method == "Network.requestWillBeSent":
            urls[params["requestId"]] = params["request"]["url"]
        elif method == "Network.loadingFailed":
            failed.append(f"{params.get('errorText')}: {urls.get(params['requestId'], params['requestId'])}")
    return errors, failed


def check_page(path: str | os.PathLike, executable: str | None = None, timeout: float = 60.0) -> PageCheck:
    """Load a local HTML file in headless Chromium and report what resolved and every error it logged."""
    url = _file_url(path)
    with DevToolsPipe(executable, timeout) as browser:
        session = browser.open_page(url)
        state = browser.evaluate(_PAGE_STATE_JS, session)
        errors, failed = _errors(browser.events, session)
    return PageCheck(state["title"], state["images"], state["videos"], state["links"], errors, failed)


def screenshot(
    path: str | os.PathLike,
    out: str | os.PathLike,
    width: int = 1280,
    executable: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """A PNG of the whole page (all of its height) at `width` CSS pixels, written atomically to `out`."""
    url = _file_url(path)
    with DevToolsPipe(executable, timeout) as browser:
        session = browser.open_page(url, width=width)
        browser.evaluate(_PAGE_STATE_JS, session)  # every image settled
        height = browser.send("Page.getLayoutMetrics", session=session)["cssContentSize"]["height"]
        metrics = {"width": width, "height": int(height) + 1, "deviceScaleFactor": 1, "mobile": False}
        browser.send("Emulation.setDeviceMetricsOverride", metrics, session=session)
        params = {"format": "png", "captureBeyondViewport": True}
        data = browser.send("Page.captureScreenshot", params, session=session)["data"]
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.write_bytes(base64.b64decode(data))
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m pyramidal_wan.eval.browser check PAGE` or `... screenshot PAGE PNG [--width W]`."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m pyramidal_wan.eval.browser", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check", help="load a page; list what did not resolve").add_argument("page")
    shot = commands.add_parser("screenshot", help="a full-page PNG of a page")
    shot.add_argument("page")
    shot.add_argument("png")
    shot.add_argument("--width", type=int, default=1280)
    args = parser.parse_args(argv)
    try:
        if args.command == "screenshot":
            print(f"wrote {screenshot(args.page, args.png, width=args.width)}")
            return 0
        problems = check_page(args.page).problems()
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(problems) or f"{args.page}: every image, video and link resolves; no console errors")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
