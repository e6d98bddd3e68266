"""bench/tables.py: the measured tables in docs/ say what bench/results/*.json says, and go stale visibly."""

from __future__ import annotations

import json
import shutil

import pytest

from bench import tables


def test_every_page_is_up_to_date_with_its_result_files():
    assert tables.main(["--check"]) == 0, "docs/ differ from bench/results/*.json: run `make docs` and commit"


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A copy of bench/results/ and docs/*.md that the test may change, with tables.py pointed at it."""
    results, docs = tmp_path / "results", tmp_path / "docs"
    shutil.copytree(tables.RESULTS, results)
    docs.mkdir()
    for page in tables._blocks():
        shutil.copy(tables.DOCS / page, docs / page)
    monkeypatch.setattr(tables, "RESULTS", results)
    monkeypatch.setattr(tables, "DOCS", docs)
    monkeypatch.setattr(tables, "ROOT", tmp_path)
    return results, docs


def test_a_changed_result_makes_the_page_stale_until_rendered(sandbox):
    results, docs = sandbox
    rel = json.loads((results / "reliability.json").read_text())
    rel["records_lost"] = 7
    (results / "reliability.json").write_text(json.dumps(rel))
    assert tables.main(["--check"]) == 1
    assert "| **records lost** | **0** |" in (docs / "reliability.md").read_text()  # --check wrote nothing
    assert tables.main([]) == 0
    for page in ("reliability.md", "benchmarks.md"):
        assert "| **records lost** | **7** |" in (docs / page).read_text()
    assert tables.main(["--check"]) == 0


def test_a_missing_result_file_says_so_instead_of_keeping_old_numbers(sandbox):
    results, docs = sandbox
    (results / "distill_born_again.json").unlink()
    tables.main([])
    page = (docs / "benchmarks.md").read_text()
    block = page.split("<!-- bench:born_again -->")[1].split("<!-- /bench:born_again -->")[0]
    assert "Not measured yet" in block and "distill_born_again.json" in block and "3.609" not in block


def test_a_page_without_its_markers_is_an_error(sandbox):
    _, docs = sandbox
    page = docs / "teacher.md"
    page.write_text(page.read_text().replace("<!-- bench:batch_vs_online -->", ""))
    with pytest.raises(SystemExit, match="no <!-- bench:batch_vs_online -->"):
        tables.main([])


def test_the_number_formats():
    assert [tables._sig(x) for x in (25.603, 505.31, 47.598, 119.44, 17793.2, 2.536e7)] == \
        ["25.60", "505.3", "47.60", "119.4", "17,793", "2.5 × 10⁷"]
    assert [tables._rise(x) for x in (0.0, 0.41452, 18.735, -0.2)] == ["+0.0 %", "+41.5 %", "+1874 %", "-20.0 %"]


def test_the_one_run_compression_table_reads_its_json():
    d = json.loads((tables.RESULTS / "compress_methods.json").read_text())
    text = tables.compress_methods(d)
    gptq = next(line for line in text.splitlines() if line.startswith("| int4 g64 GPTQ"))
    ppl = d["steps"]["gptq4_g64"]["after"]["perplexity"]
    assert f"| {ppl:.2f} |" in gptq and "RTN's)" in gptq
    assert text.count("\n| ") == 2 + len(d["steps"])  # header separator, source row, one row per step
