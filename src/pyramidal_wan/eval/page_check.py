"""Headless Chromium through Playwright: check a page (a local HTML file or a URL) and screenshot it.

Playwright drives the system Chromium (`executable_path`; no browser download). `check_page` loads a page
and reports what did not resolve (images, videos, local links) and every console error, uncaught exception
and failed request; `screenshot` captures the whole page. The browser app's test drives `launch_chromium`
directly.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from pyramidal_wan.errors import InputError
from pyramidal_wan.utils.io import atomic_path

CHROMIUM = "/usr/bin/chromium"
# The network is closed and the profile is thrown away: no sandbox (root in a container), no GPU, and none
# of the background services that would try to reach the network.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--mute-audio",
)
INSTALL_HINT = "apt-get install -y chromium (Debian) or set PYRAMIDAL_WAN_CHROMIUM to a Chromium binary"

# Waits for every image and video of the page; returns what each resolved to.
_PAGE_STATE_JS = """
async () => {
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
}
"""


def find_chromium() -> str | None:
    """The Chromium binary: $PYRAMIDAL_WAN_CHROMIUM, /usr/bin/chromium, or `chromium` on the PATH."""
    for candidate in (os.environ.get("PYRAMIDAL_WAN_CHROMIUM"), CHROMIUM, shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@contextlib.contextmanager
def launch_chromium(executable: str | None = None) -> Iterator:
    """A headless Playwright `Browser` on the system Chromium (closed on exit)."""
    from playwright.sync_api import sync_playwright

    executable = executable or find_chromium()
    if executable is None:
        raise InputError(f"no Chromium found: {INSTALL_HINT}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=list(CHROMIUM_ARGS))
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class PageCheck:
    """What a headless browser saw on one page."""

    title: str
    images: list[dict]  # {"src", "ok"} per <img>
    videos: list[dict]  # {"src", "ok"} per <video>
    links: list[str]  # every <a href>
    console_errors: list[str] = field(default_factory=list)  # console.error and uncaught exceptions
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


def page_url(page: str | os.PathLike) -> str:
    """A URL as it is; a local path as its file:// URL (the file must exist)."""
    if str(page).startswith(("http://", "https://", "file:")):
        return str(page)
    path = Path(page).resolve()
    if not path.is_file():
        raise InputError(f"{path} is not a file")
    return path.as_uri()


def record_errors(page) -> tuple[list[str], list[str]]:
    """Lists that fill with a Playwright page's console errors / exceptions and its failed requests."""
    errors, failed = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "assert") else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("requestfailed", lambda r: failed.append(f"{r.failure}: {r.url}"))
    return errors, failed


def check_page(page: str | os.PathLike, executable: str | None = None, timeout: float = 60.0) -> PageCheck:
    """Load a page in headless Chromium and report what resolved and every error it logged."""
    url = page_url(page)
    with launch_chromium(executable) as browser:
        tab = browser.new_page()
        errors, failed = record_errors(tab)
        tab.goto(url, wait_until="load", timeout=timeout * 1000)
        state = tab.evaluate(_PAGE_STATE_JS)
    return PageCheck(state["title"], state["images"], state["videos"], state["links"], errors, failed)


def screenshot(
    page: str | os.PathLike,
    out: str | os.PathLike,
    width: int = 1280,
    executable: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """A PNG of the whole page (all of its height) at `width` CSS pixels, written atomically to `out`."""
    url = page_url(page)
    out = Path(out)
    with launch_chromium(executable) as browser:
        tab = browser.new_page(viewport={"width": width, "height": 800})
        tab.goto(url, wait_until="load", timeout=timeout * 1000)
        tab.evaluate(_PAGE_STATE_JS)  # every image settled
        with atomic_path(out) as tmp:
            tab.screenshot(path=str(tmp), full_page=True, type="png")
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m pyramidal_wan.eval.page_check check PAGE` or `... screenshot PAGE PNG [--width W]`."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m pyramidal_wan.eval.page_check", description=__doc__)
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
