"""A real run's ``report.html`` and its dataset in the viewer, in headless Chromium (tests/browser.py).

The run is the session's end-to-end pipeline run (``e2e_run``: real vLLM server, real Prefect flow).
Screenshots go to ``EAKD_SCREENSHOTS`` when set, else the test's tmp folder.
"""

from __future__ import annotations

import json
import re
import threading

import pytest
from playwright.sync_api import expect

from tests.browser import browser_page, screenshot_dir

pytestmark = pytest.mark.integration


def _of(n: int) -> re.Pattern:
    """The pager's "rows 1–50 of N" for exactly N (not a number that starts with N's digits)."""
    return re.compile(rf"\bof {n}\b")


def _svg_size(page, selector: str) -> tuple[float, float]:
    box = page.locator(f"{selector} svg").first.bounding_box()
    assert box is not None, f"{selector}: no rendered svg"
    return box["width"], box["height"]


def test_report_html_renders_every_section_offline(e2e_run, tmp_path):
    run_dir, _ = e2e_run
    report = json.loads((run_dir / "report.json").read_text())
    requests: list[str] = []
    with browser_page() as page:
        page.on("request", lambda r: requests.append(r.url))
        page.goto((run_dir / "report.html").resolve().as_uri())
        stages = {g.get_attribute("data-stage"): g.get_attribute("data-status")
                  for g in page.locator("#pipeline g.stage").all()}
        assert stages == {"generate": "completed", "train": "completed", "evaluate": "completed", "compress": "completed",
                          "report": "completed"}
        assert " s" in page.locator('#pipeline g.stage[data-stage="train"]').text_content()  # its wall time
        for fig in ("#funnel", "#tokens-over-time", "#loss-curves", "#size-quality"):
            w, h = _svg_size(page, fig)
            assert w > 200 and h > 100, (fig, w, h)
            assert page.locator(f"{fig} svg path").count() > 3, f"{fig}: the plot drew nothing"
        funnel_text = page.locator("#funnel").inner_text()
        assert "generated" in funnel_text and "novel" in funnel_text and str(report["generate"]["rows"]["generated"]) in funnel_text
        assert "CE term" in page.locator("#loss-curves").inner_text()
        assert "Pareto frontier" in page.locator("#size-quality").inner_text()
        steps = page.locator("#compress-steps tbody tr")
        assert steps.count() == 1 + len(report["compress"]["steps"])
        assert [steps.nth(i + 1).locator("td").first.inner_text() for i in range(steps.count() - 1)] == \
            [s["name"] for s in report["compress"]["steps"]]
        styles = {r.locator("td").first.inner_text() for r in page.locator("#rows-per-style tbody tr").all()}
        assert styles == set(report["generate"]["kept_per_style"])
        assert page.locator("#train-metrics tbody tr").count() == 3
        assert not page.problems, page.problems
        page.screenshot(path=str(screenshot_dir(tmp_path) / "report.png"), full_page=True)
    assert requests == [(run_dir / "report.html").resolve().as_uri()], "the report fetched something: " + repr(requests)


def test_viewer_browses_filters_and_shows_a_row(e2e_run, tmp_path):
    from datasets import load_from_disk

    from flows.viewer import make_server

    run_dir, _ = e2e_run
    dd = load_from_disk(str(run_dir / "dataset"))
    train = dd["train"]
    server = make_server(run_dir / "dataset", port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        with browser_page() as page:
            page.goto(url)
            page.wait_for_selector("#rows tbody tr.row")
            expect(page.locator("#pager-info")).to_contain_text(_of(train.num_rows))
            # filter by style: every row shown is that style, and the count is the dataset's
            page.select_option("#style", "cot")
            expect(page.locator("#pager-info")).to_contain_text(_of(sum(s == "cot" for s in train["style"])))
            shown = page.locator("#rows tbody tr.row")
            assert shown.count() > 0
            assert all("cot" in shown.nth(i).inner_text() for i in range(shown.count()))
            # search: a word from one row's teacher output narrows the table to rows containing it
            page.select_option("#style", "")
            word = max((w for r in train for w in r["raw_output"].split() if w.isalpha()), key=len)
            page.fill("#search", word)
            n_match = sum(word.lower() in "\n".join([r["id"], r["prompt_messages"][-1]["content"], r["raw_output"],
                                                     r["answer"] or "", r["gold"] or ""]).lower() for r in train)
            assert 0 < n_match < train.num_rows
            expect(page.locator("#pager-info")).to_contain_text(_of(n_match))
            # open a row: the prompt sent, the teacher's raw output and the parsed answer are shown
            page.locator("#rows tbody tr.row").first.click()
            expect(page.locator("#detail")).to_contain_text("raw output")
            detail = page.inner_text("#detail")
            assert word in detail
            page.screenshot(path=str(screenshot_dir(tmp_path) / "viewer.png"), full_page=True)
            assert not page.problems, page.problems
    finally:
        server.shutdown()
        server.server_close()


def test_viewer_compares_rows_removed_by_each_filter(e2e_run, tmp_path):
    """The run's config again with truncated answers dropped: the same cached teacher answers (nothing
    is sent), now with a `removed` split; clicking a reason in the viewer shows exactly those rows."""
    from datasets import load_from_disk

    from distill.config import load_config
    from distill.data.dataset import generate_dataset
    from flows.config import PipelineConfig
    from flows.viewer import make_server

    run_dir, _ = e2e_run
    cfg = load_config(PipelineConfig, run_dir / "config.yaml", ["generate.drop_truncated=true"])
    ds = generate_dataset(cfg.generate, cfg.teacher, tmp_path / "dataset")
    removed = load_from_disk(str(ds))["removed"]
    assert removed.num_rows > 0, "the tiny run's 48-token answers should include truncated ones"
    server = make_server(ds, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with browser_page() as page:
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
            page.wait_for_selector("#reasons li[data-reason='truncated']")
            page.locator("#reasons li[data-reason='truncated']").click()
            n = sum(r.startswith("truncated") for r in removed["removed_reason"])
            expect(page.locator("#pager-info")).to_contain_text(_of(n))
            rows = page.locator("#rows tbody tr.row")
            assert rows.count() == min(n, 50)
            assert all("truncated" in rows.nth(i).inner_text() for i in range(rows.count()))
            rows.first.click()
            expect(page.locator("#detail")).to_contain_text("length")
            assert not page.problems, page.problems
            page.screenshot(path=str(screenshot_dir(tmp_path) / "viewer-removed.png"), full_page=True)
    finally:
        server.shutdown()
        server.server_close()
