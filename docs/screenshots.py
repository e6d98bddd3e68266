"""The README's screenshots: a run's report.html and its dataset viewer in headless Chromium.

    python docs/screenshots.py runs/demo-<timestamp> docs      # or: make screenshots

Rewrites the run's report first (so the page is the current code's), then saves ``report.png``,
``viewer.png`` (a CoT row opened) and ``viewer-removed.png`` (the removed split, filtered by the first
removal reason) into the output folder.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flows.report import write_report  # noqa: E402
from flows.viewer import make_server  # noqa: E402
from tests.browser import browser_page  # noqa: E402


def main(run_dir: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_report(run_dir)
    with browser_page(width=1100, height=900) as page:
        page.goto((run_dir / "report.html").resolve().as_uri())
        page.screenshot(path=str(out / "report.png"), full_page=True)
    server = make_server(run_dir / "dataset", port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with browser_page(width=1300, height=1000) as page:
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
            page.wait_for_selector("#rows tbody tr.row")
            page.select_option("#style", "cot")
            page.wait_for_timeout(500)
            page.locator("#rows tbody tr.row").first.click()
            page.wait_for_timeout(300)
            page.screenshot(path=str(out / "viewer.png"), full_page=False)
            reasons = page.locator("#reasons li[data-reason]")
            if reasons.count():
                page.select_option("#style", "")
                reasons.first.click()
                page.wait_for_timeout(500)
                page.locator("#rows tbody tr.row").first.click()
                page.wait_for_timeout(300)
                page.screenshot(path=str(out / "viewer-removed.png"), full_page=False)
    finally:
        server.shutdown()
        server.server_close()
    print("\n".join(str(p) for p in sorted(out.glob("*.png"))))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python docs/screenshots.py RUN_DIR OUT_DIR")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
