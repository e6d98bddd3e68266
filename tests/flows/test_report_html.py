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


def _eval() -> dict:
    """An eval/eval.json as `evaluate_student` writes it (trimmed): the base model and the student."""
    def model(name: str, ppl: float, loss: float, top1: float, kl: float, cot: int, teacher: float) -> dict:
        per_style = {"icl": {"rows": 2, "correct": 1, "accuracy": 0.5}, "cot": {"rows": 2, "correct": cot, "accuracy": cot / 2}}
        return {"model": f"/runs/r/{name}", "layers": 2, "parameters": 3_000_000,
                "perplexity": {"perplexity": ppl, "windows": 2}, "validation": {"rows": 4, "loss": loss,
                "top1_agreement": top1, "kl_topk": kl, "tokens": 40, "kl_note": None},
                "accuracy": {"rows": 4, "correct": 1 + cot, "accuracy": (1 + cot) / 4, "no_answer": 0,
                             "teacher_agreement": teacher, "teacher_accuracy": 0.75, "per_style": per_style}}
    return {"format": "eakd-eval/v1", "model": "/runs/r/student", "dataset": "/runs/r/dataset",
            "eval_text_source": "wikitext-2/<wiki.test.tokens>", "rows": {"validation": 4, "task": 4},
            "perplexity_protocol": {"window": 512, "max_windows": 4, "protocol": "quick"},
            "base": model("<base>", 25.49, 0.5071, 1.0, 0.0, 2, 1.0), "student": model("student", 77.0, 1.0913, 0.7024, 0.5682, 0, 0.25)}


def test_evaluation_section_shows_base_to_student_in_markdown_and_html():
    from flows.report import evaluation_rows, render_markdown

    rep = _report("r") | {"evaluate": _eval()}
    rep["stages"]["evaluate"] = {"status": "cached", "seconds": 1.5}
    rows = {r[0].strip(): r[1:] for r in evaluation_rows(rep["evaluate"])}
    assert rows["perplexity"] == ["25.490", "77.000"] and rows["top-1 agreement with the teacher"] == ["100.0%", "70.2%"]
    assert rows["task accuracy"] == ["75.0% (3/4)", "25.0% (1/4)"]
    assert rows["accuracy, chain of thought (cot)"] == ["100.0%", "0.0%"] and rows["accuracy, few-shot (icl)"] == ["50.0%", "50.0%"]
    assert rows["same answer as the teacher"] == ["100.0%", "25.0%"]
    md = render_markdown(rep)
    assert "## Evaluate" in md and "| metric | base | student |" in md and "| perplexity | 25.490 | 77.000 |" in md
    page = render_html(rep)
    assert 'id="eval-metrics"' in page and "<th>base</th><th>student</th>" in page
    assert 'data-stage="evaluate" data-status="cached"' in page and "&lt;base&gt;" in page and "<base>" not in page
    assert page.index('data-stage="train"') < page.index('data-stage="evaluate"') < page.index('data-stage="compress"')
    # without a base model (evaluate.baseline=false, or no training in the run): one column
    alone = _eval() | {"base": None}
    assert all(len(r) == 2 for r in evaluation_rows(alone))
    assert "<th>base</th>" not in render_html(_report("r") | {"evaluate": alone})


def test_report_of_an_old_run_without_eval_and_of_one_with_it(tmp_path):
    from flows.report import build_report, write_report

    run = tmp_path / "run"
    (run / "dataset").mkdir(parents=True)
    (run / "dataset" / "stats.json").write_text(json.dumps(_report(str(run))["generate"]))
    rep = build_report(run, {"generate": {"status": "completed", "seconds": 1.0}})
    assert "evaluate" not in rep
    write_report(run, rep["stages"])
    page = (run / "report.html").read_text()
    assert 'data-stage="evaluate" data-status="skipped"' in page and 'id="evaluate"' not in page
    assert "## Evaluate" not in (run / "report.md").read_text()
    (run / "eval").mkdir()
    (run / "eval" / "eval.json").write_text(json.dumps(_eval()))
    write_report(run, {"evaluate": {"status": "completed", "seconds": 2.0}})
    assert json.loads((run / "report.json").read_text())["evaluate"]["student"]["perplexity"]["perplexity"] == 77.0
    assert "## Evaluate" in (run / "report.md").read_text() and 'id="eval-metrics"' in (run / "report.html").read_text()


def test_ability_table_leads_the_markdown_and_html_reports():
    """With probes, report.md opens with the headline ability table (and per-task rows), report.html with the table
    and a bar chart; a negative transfer is flagged in both."""
    from distill.probes.score import ability_table
    from flows.report import ability_rows, probe_task_rows, render_markdown

    def probes(zero: float, k: float, control: float) -> dict:
        task = lambda x: {"zero_shot": {"strict": x, "lenient": x, "n": 8, "per_task": {"larger": {"strict": x, "lenient": x, "n": 8}}}}  # noqa: E731
        icl = task(zero) | {"k_shot": {"strict": k, "lenient": k, "n": 8, "per_task": {"larger": {"strict": k, "lenient": k, "n": 8}}}}
        ctl = {"zero_shot": {"strict": 0.0, "lenient": control, "n": 8,
                             "per_task": {"capital": {"strict": 0.0, "lenient": control, "n": 8}}}}
        return {"icl": icl, "control": ctl}

    t, b, s = probes(0.0, 0.625, 0.75), probes(0.125, 0.5, 0.75), probes(0.5, 0.5, 0.375)
    ev = _eval() | {"teacher": {"model": "teacher", "probes": t},
                    "abilities": ability_table(t, b["probes"] if "probes" in b else b, s)}
    ev["base"]["probes"], ev["student"]["probes"] = b, s
    rows = {r[0]: r[1:] for r in ability_rows(ev)}
    assert rows["ICL"][1:] == ["62.5%", "12.5%", "50.0%", "75.0%"]  # (0.5 - 0.125) / (0.625 - 0.125)
    assert rows["control"][3].endswith("negative transfer") and "control:capital" in rows
    tasks = {r[0]: r[1:] for r in probe_task_rows(ev)}
    assert tasks["larger"] == ["62.5%", "0.0%", "12.5%", "50.0%"] and tasks["capital (control, lenient)"][3] == "37.5%"
    md = render_markdown(_report("r") | {"evaluate": ev})
    assert md.index("## Abilities") < md.index("## Stages") and "| ICL | 0-shot accuracy (teacher: k-shot) |" in md
    page = render_html(_report("r") | {"evaluate": ev})
    assert page.index('id="abilities"') < page.index('id="evaluate"') and 'id="abilities-plot"' in page
    assert "negative transfer" in page
    assert 'id="abilities"' not in render_html(_report("r") | {"evaluate": _eval()})  # no probes: no section


def test_lm_eval_scores_and_their_agreement_with_eakd_show_in_markdown_and_html():
    from flows.report import render_markdown

    lm = {"tasks": {"eakd_demo_icl": {"samples": 2, "of": 24, "n_shot": 0, "metrics": {
              "exact_match,none": {"base": 0.5, "base_stderr": 0.5, "student": 1.0, "student_stderr": 0.0}}}},
          "models": {"base": {}, "student": {}},
          "agreement": {"eakd_demo_icl": {"student": {"questions": 2, "lm_eval": 1.0, "eakd": 1.0, "eakd_strict": 0.5,
                                                      "same": 2, "same_strict": 1, "differ": ["<q>/held_out-1"]}}}}
    rep = _report("r") | {"evaluate": _eval() | {"lm_eval": lm}}
    md = render_markdown(rep)
    assert "| eakd_demo_icl | exact_match,none | 2 of 24 | 0.500 ± 0.500 | 1.000 ± 0.000 |" in md
    assert "| eakd_demo_icl | student | 2 | 100.0% | 100.0% | 50.0% | 1 of 2 (differ: <q>/held_out-1) |" in md
    page = render_html(rep)
    assert 'id="lm-eval"' in page and 'id="lm-eval-agreement"' in page and "&lt;q&gt;/held_out-1" in page
    without = render_html(_report("r") | {"evaluate": _eval() | {"lm_eval": lm | {"agreement": {}}}})
    assert 'id="lm-eval"' in without and 'id="lm-eval-agreement"' not in without
