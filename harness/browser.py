"""Debian's chromium, headless, driven by playwright (which downloads no browser of its own here), with fake media
devices: a microphone that plays a file once. Every request the pages make is recorded, to check where they go."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = (
    "--no-sandbox",  # root, in a network namespace of the test's own
    "--disable-gpu",
    "--no-first-run",
    # Nothing of Chromium's own reaches for the network (updates, metrics, sync, safe browsing lists, QUIC).
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-domain-reliability",
    "--disable-quic",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    # Microphone allowed without asking; a fake device; audio plays without a click.
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    # Host ICE candidates as addresses, not mDNS names (nothing resolves .local here).
    "--disable-features=WebRtcHideLocalIpsWithMdns",
)


@contextlib.contextmanager
def chromium(microphone: Path | None = None) -> Iterator[Browser]:
    """Chromium whose fake microphone plays ``microphone`` (a WAV file) once, then silence."""
    flags = [*FLAGS]
    if microphone is not None:
        flags.append(f"--use-file-for-fake-audio-capture={microphone}%noloop")
    with sync_playwright() as driver:
        browser = _launch(driver, flags)
        try:
            yield browser
        finally:
            browser.close()


def _launch(driver: Playwright, flags: list[str]) -> Browser:
    return driver.chromium.launch(executable_path=CHROMIUM, args=flags, headless=True)


class Person:
    """One browser context (its own cookies: one person) with one page, and the hosts its requests went to."""

    def __init__(self, browser: Browser) -> None:
        self.context: BrowserContext = browser.new_context()
        self.page: Page = self.context.new_page()
        self.hosts: set[str] = set()
        self.console: list[str] = []  # the page's console messages, for a failure's explanation
        self.page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}"))
        self.page.on("pageerror", lambda error: self.console.append(f"uncaught: {error}"))
        self.page.on("requestfailed", lambda request: self.console.append(f"failed: {request.url} {request.failure}"))
        self.page.on("framenavigated", lambda frame: self.console.append(f"navigated: {frame.url}"))
        self.page.on("response", lambda response: self.console.append(f"{response.status}: {response.url[:80]}"))
        self.page.on("request", lambda request: self.hosts.add(urlsplit(request.url).hostname or request.url))
        self.page.on("websocket", lambda ws: self.hosts.add(urlsplit(ws.url).hostname or ws.url))

    def close(self) -> None:
        self.context.close()
