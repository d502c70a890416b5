"""Debian's headless Chromium driven by Playwright, as the browser tests start it."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Browser, Playwright

CHROMIUM = "/usr/bin/chromium"
#: Flags that keep Chromium from reaching out to Google's services from this closed network at every start.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def launch_chromium(playwright: Playwright) -> Browser:
    """Start Debian's Chromium headless; fail (never skip) when it is not installed."""
    assert Path(CHROMIUM).exists(), f"the browser tests need Debian's Chromium at {CHROMIUM} (apt-get install chromium)"
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
