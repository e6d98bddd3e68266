"""Headless Chromium for the report and viewer tests: Debian's ``chromium`` driven by Playwright.

Playwright's own browser download cannot run here (no internet), so it drives the system browser
(``/usr/bin/chromium``, installed by ``make browser``, which ``make test`` runs). Without it the tests
skip with that reason, unless ``EAKD_REQUIRE_BROWSER=1`` (set by ``.ci/run``) makes them fail.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

# no background requests to Google's hosts (the sandbox refuses them), no first-run UI, no GPU
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def chromium_path() -> str | None:
    return os.environ.get("EAKD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def require_chromium() -> str:
    path = chromium_path()
    if path is None:
        msg = "Debian's chromium is not installed: run `make browser` (apt-get install chromium)"
        if os.environ.get("EAKD_REQUIRE_BROWSER") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@contextmanager
def browser_page(width: int = 1200, height: int = 900):
    """A fresh headless Chromium page; console errors and failed requests are collected on ``page.problems``."""
    from playwright.sync_api import sync_playwright

    exe = require_chromium()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.problems = []
            page.on("console", lambda m: m.type == "error" and page.problems.append(f"console: {m.text}"))
            page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: page.problems.append(f"request failed: {r.url}"))
            yield page
        finally:
            browser.close()


def screenshot_dir(tmp_path: Path) -> Path:
    """Where the tests save screenshots: ``EAKD_SCREENSHOTS`` (``make screenshots`` sets docs/), else tmp."""
    out = Path(os.environ.get("EAKD_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out
