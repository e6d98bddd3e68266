"""report.html's pure parts (funnel, Pareto frontier, throughput bins, escaping) and `eakd report`."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from flows.report_html import funnel, pareto_front, render_html, throughput_bins


def test_funnel_removes_each_reason_at_its_stage():
    stages = dict(funnel(100, {"truncated": 5, "teacher_error": 1, "gold_mismatch": 7, "sc_minority": 3,
                               "filter_length": 4, "contamination": 2, "novelty": 6}))
    assert stages == {"generated": 100, "parsed": 94, "gold-matched": 87, "voted": 84, "filtered": 78, "novel": 72}


def test_funnel_counts_an_unknown_reason_as_a_filter_and_ends_at_what_was_kept():
    rng = random.Random(0)
    for _ in range(50):
        reasons = {r: rng.randint(0, 9) for r in ("truncated", "judge_low", "schema_invalid", "something_new", "novelty")}
        out = funnel(200, reasons)
        counts = [n for _, n in out]
        assert counts == sorted(counts, reverse=True)
        assert counts[-1] == 200 - sum(reasons.values())
        assert dict(out)["filtered"] == dict(out)["voted"] - reasons["judge_low"] - reasons["something_new"]


def test_pareto_front_is_exactly_the_undominated_points():
    rng = random.Random(1)
    for _ in range(200):
        pts = [(rng.randint(1, 20), rng.randint(1, 20)) for _ in range(rng.randint(1, 12))]
        front = set(pareto_front(pts))

        def dominated(i):
            return any((pts[j][0] <= pts[i][0] and pts[j][1] <= pts[i][1]) and pts[j] != pts[i] for j in range(len(pts)))

        for i in range(len(pts)):
            if i in front:
                assert not dominated(i)
            else:
                assert dominated(i) or any(pts[j] == pts[i] for j in front)


def test_throughput_bins_conserve_the_tokens():
    timeline = [[0.5, 10], [0.6, 30], [2.0, 35], [7.5, 90], [10.0, 100]]
    centres, rates = throughput_bins(timeline, bins=5)
    width = (10.0 - 0.5) / 5
    assert len(centres) == len(rates) == 5
    assert sum(r * width for r in rates) == pytest.approx(100)
    assert rates[0] == pytest.approx(35 / width) and rates[3] == pytest.approx(55 / width)


def _report(run_dir: str) -> dict:
    return {"run_dir": run_dir, "eakd_version": "test",
            "stages": {"generate": {"status": "completed", "seconds": 3.0}, "train": {"status": "failed", "seconds": 1.0}},
            "generate": {"seeds": 3, "requests": 9, "rows": {"generated": 9, "train": 6, "validation": 1, "removed": 2},
                         "kept_per_style": {"icl": 3, "cot": 4}, "removed_by_reason": {"truncated": 1, "<img src=x>": 1},
                         "gold_match_rate": {"icl": 0.5},
                         "teacher": {"requests": 9, "cache_hits": 0, "prompt_tokens": 90, "completion_tokens": 60,
                                     "completion_tokens_per_s": 20.0, "wall_s": 3.0, "retries": 0, "failures": {},
                                     "timeline": [[0.0, 10], [1.0, 30], [3.0, 60]]}}}


def test_html_escapes_run_strings_and_has_no_script(tmp_path):
    page = render_html(_report("runs/<script>alert(1)</script>"))
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x>" not in page and "&lt;img src=x&gt;" in page
    assert 'data-stage="train" data-status="failed"' in page
    assert 'data-stage="compress" data-status="skipped"' in page
    assert 'id="tokens-over-time"><svg' in page and 'id="funnel"><svg' in page
    assert "default-src 'none'" in page  # no fetches: the page is one file


def test_html_without_paid_tokens_says_why_there_is_no_curve():
    rep = _report("r")
    rep["generate"]["teacher"]["timeline"] = []
    page = render_html(rep)
    assert 'id="tokens-over-time" class="note"' in page and "came from the cache" in page


def _eakd(*args, cwd):
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_report_command_rejects_a_folder_that_is_not_a_run(repo_root, tmp_path):
    proc = _eakd("report", str(tmp_path), cwd=repo_root)
    assert proc.returncode == 2
    assert "is not an eakd run directory" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "report.html").exists()


def test_report_command_rewrites_html_keeping_the_stages(repo_root, tmp_path):
    run = tmp_path / "run"
    (run / "dataset").mkdir(parents=True)
    rep = _report(str(run))
    (run / "dataset" / "stats.json").write_text(json.dumps(rep["generate"]))
    (run / "report.json").write_text(json.dumps(rep))  # the stages of the run's own report
    proc = _eakd("report", str(run), cwd=repo_root)
    assert proc.returncode == 0, proc.stderr
    page = (run / "report.html").read_text()
    assert 'data-stage="generate" data-status="completed"' in page and 'data-stage="train" data-status="failed"' in page
    assert json.loads((run / "report.json").read_text())["stages"] == rep["stages"]
    assert not list(run.glob("*.tmp"))
