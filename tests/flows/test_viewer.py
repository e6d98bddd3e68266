"""``eakd view``: index counts, query filters and pagination, and the HTTP server's routes and security."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import threading
from pathlib import Path

import pytest

from distill.config import ConfigError
from flows.viewer import MAX_LIMIT, content_security_policy, make_server, open_dataset

LOGPROBS_MARK = "LOGPROB_SENTINEL_-9.87654"
TEACHER = {"model": "tiny-teacher", "engine": "vllm", "params": json.dumps({"temperature": 0.0, "max_tokens": 64}),
           "template": "cot", "template_sha": "abc123"}


def _row(i: int, style: str, *, gold="4", answer="4", gm=True, finish="stop", reason=None, raw=None,
         judge=None, vote=None, question=None) -> dict:
    """One row in the dataset contract of distill/data/dataset.py."""
    question = question or f"What is {i} plus {i}?"
    return {
        "seed_id": f"s{i}", "style": style,
        "prompt_messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Example: 1+1?"},
                            {"role": "assistant", "content": "2"}, {"role": "user", "content": question}],
        "gold": gold, "demo_ids": [f"d{i}", "d99"], "teacher": TEACHER, "id": f"s{i}:{style}:0",
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": str(answer)}],
        "raw_output": raw if raw is not None else f"Reasoning for row {i}. The answer is {answer}.",
        "rationale": f"Reasoning for row {i}." if style == "cot" else "", "answer": answer,
        "quality": {"gold_match": gm, "finish_reason": finish, "extraction": "answer_is", "choice": 0,
                    "vote_share": vote, "voted_answer": answer if vote is not None else None, "completion_tokens": 7,
                    "judge_score": judge, "judge_reason": "terse" if judge is not None else None},
        "teacher_logprobs": json.dumps([{"token_ids": [1], "logprobs": [LOGPROBS_MARK]}]),
        "teacher_token_ids": list(range(5 + i)), "removed_reason": reason,
    }


TRAIN = [
    _row(0, "icl"),
    _row(1, "icl", answer="5", gm=False),
    _row(2, "cot", raw="<script>alert(1)</script> The answer is 4.", judge=2),
    _row(3, "cot", gold=None, gm=None, vote=0.75, judge=3, question="How many APPLES are in the Basket?"),
    _row(4, "instruct", answer=None, gm=False),
    _row(5, "instruct"),
]
VALIDATION = [_row(10, "cot"), _row(11, "icl", answer="9", gm=False)]
REMOVED = [
    _row(20, "cot", finish="length", reason="truncated", gm=False, answer="1"),
    _row(21, "icl", reason="contamination: 3 n-gram(s) overlap eval items (gsm8k test #12)"),
    _row(22, "cot", reason="contamination: 5 n-gram(s) overlap eval items (gsm8k test #40)"),
    _row(23, "instruct", reason="near_duplicate: similar to s3:instruct:0 (0.93)"),
]


def _save(path: Path, splits: dict[str, list[dict]]) -> Path:
    from datasets import Dataset, DatasetDict

    DatasetDict({name: Dataset.from_list(rows) for name, rows in splits.items()}).save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def ds_dir(tmp_path_factory) -> Path:
    path = _save(tmp_path_factory.mktemp("view") / "dataset", {"train": TRAIN, "validation": VALIDATION, "removed": REMOVED})
    (path / "stats.json").write_text(json.dumps({"rows": {"train": 6}, "removed_by_reason": {"truncated": 1},
                                                 "gold_match_rate": {"cot": 0.5}, "judge": {"min_score": 3}}))
    return path


@pytest.fixture(scope="module")
def index(ds_dir):
    return open_dataset(ds_dir)


@pytest.fixture(scope="module")
def server(ds_dir):
    srv = make_server(ds_dir, port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _get(srv, path: str, host: str | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=10)
    headers = {"Host": host} if host else {}
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


def _ids(result: dict) -> list[str]:
    return [r["id"] for r in result["rows"]]


# --- index and meta ---

def test_meta_counts_splits_styles_reasons_and_flags(index):
    meta = index.meta()
    assert {s: v["rows"] for s, v in meta["splits"].items()} == {"train": 6, "validation": 2, "removed": 4}
    assert meta["splits"]["train"]["styles"] == {"icl": 2, "cot": 2, "instruct": 2}
    assert meta["splits"]["removed"]["reasons"] == {"contamination": 2, "near_duplicate": 1, "truncated": 1}
    assert meta["splits"]["train"]["reasons"] == {}
    flags = meta["splits"]["train"]["flags"]
    assert (flags["gold_match"], flags["gold_mismatch"], flags["no_gold"]) == (3, 2, 1)
    assert (flags["judged"], flags["judged_low"], flags["voted"], flags["no_answer"]) == (2, 1, 1, 1)
    assert meta["splits"]["removed"]["flags"]["truncated"] == 1
    assert meta["stats"]["gold_match_rate"] == {"cot": 0.5} and meta["stats"]["removed_by_reason"] == {"truncated": 1}
    assert meta["name"] == f"{Path(index.path).parent.name}/dataset"


def test_query_filters_by_style_flag_and_reason(index):
    assert _ids(index.query("train", style="cot")) == ["s2:cot:0", "s3:cot:0"]
    assert _ids(index.query("train", flag="gold_mismatch")) == ["s1:icl:0", "s4:instruct:0"]
    assert _ids(index.query("train", flag="no_gold")) == ["s3:cot:0"]
    assert _ids(index.query("train", flag="judged_low")) == ["s2:cot:0"]
    assert _ids(index.query("removed", flag="truncated")) == ["s20:cot:0"]
    assert _ids(index.query("removed", reason="contamination")) == ["s21:icl:0", "s22:cot:0"]
    assert index.query("train", style="no-such-style")["total"] == 0


def test_query_search_is_case_insensitive_over_prompt_and_output(index):
    assert _ids(index.query("train", q="apples ARE in the basket")) == ["s3:cot:0"]  # last user message
    assert _ids(index.query("train", q="<SCRIPT>")) == ["s2:cot:0"]  # raw output
    assert _ids(index.query("validation", q="S11:ICL")) == ["s11:icl:0"]  # id
    assert index.query("train", q="Example: 1+1?")["total"] == 0  # only the last user message is searched


def test_query_combines_filters(index):
    assert _ids(index.query("train", style="cot", flag="judged")) == ["s2:cot:0", "s3:cot:0"]
    assert _ids(index.query("train", style="icl", flag="gold_match", q="row 0")) == ["s0:icl:0"]
    assert index.query("train", style="icl", flag="gold_match", q="row 1")["total"] == 0
    assert _ids(index.query("removed", reason="contamination", style="cot")) == ["s22:cot:0"]


def test_query_paginates_and_caps_limit(index):
    page = index.query("train", offset=2, limit=3)
    assert page["total"] == 6 and page["offset"] == 2 and _ids(page) == ["s2:cot:0", "s3:cot:0", "s4:instruct:0"]
    assert index.query("train", offset=6)["rows"] == [] and index.query("train", offset=6)["total"] == 6
    assert index.query("train", limit=10_000)["limit"] == MAX_LIMIT


def test_query_rows_are_display_dicts_without_logprobs(index):
    row = index.query("train", q="<script>")["rows"][0]
    assert row["raw_output"].startswith("<script>alert(1)</script>")
    assert row["teacher_tokens"] == 7 and row["teacher"]["params"] == {"temperature": 0.0, "max_tokens": 64}
    assert row["teacher"]["model"] == "tiny-teacher" and row["demo_ids"] == ["d2", "d99"]
    assert row["quality"]["judge_score"] == 2 and row["prompt_messages"][-1]["role"] == "user"
    assert "teacher_logprobs" not in row and "teacher_token_ids" not in row
    assert LOGPROBS_MARK not in json.dumps(index.query("train", limit=200))


@pytest.mark.parametrize("kwargs, needle", [
    ({"split": "test"}, "unknown split 'test'; this dataset has train, validation, removed"),
    ({"split": "train", "flag": "shiny"}, "unknown flag 'shiny'"),
    ({"split": "train", "offset": -1}, "offset must be a non-negative integer"),
    ({"split": "train", "q": "x" * 501}, "at most 500"),
])
def test_query_rejects_bad_arguments(index, kwargs, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        index.query(**kwargs)


def test_open_dataset_tolerates_missing_columns_and_splits(tmp_path):
    rows = [{"id": "a", "style": "icl", "raw_output": "Hi", "quality": {"gold_match": True, "completion_tokens": 9}},
            {"id": "b", "style": "cot", "raw_output": "Bye", "quality": {"gold_match": None, "completion_tokens": None}}]
    ix = open_dataset(_save(tmp_path / "ds", {"train": rows}))
    meta = ix.meta()
    assert list(meta["splits"]) == ["train"] and meta["stats"] is None
    assert meta["splits"]["train"]["flags"]["truncated"] == 0 and meta["splits"]["train"]["flags"]["no_gold"] == 1
    row = ix.query("train", q="bye")["rows"][0]
    assert row["id"] == "b" and row["prompt_messages"] == [] and row["teacher_tokens"] is None
    assert ix.query("train", q="hi")["rows"][0]["teacher_tokens"] == 9  # quality.completion_tokens stands in


def test_open_dataset_reads_columns_that_arrow_stored_as_null_type(tmp_path):
    """The openai backend gives no token ids or logprobs: those columns are all None, which Arrow stores
    with the null type (found on a real run's dataset, where the viewer failed before this)."""
    rows = [_row(i, "icl", gold=None, gm=None) | {"teacher_token_ids": None, "teacher_logprobs": None, "demo_ids": None}
            for i in range(3)]
    ds = _save(tmp_path / "ds", {"train": rows})
    from datasets import load_from_disk

    assert str(load_from_disk(str(ds))["train"].features["teacher_token_ids"]) == "Value('null')"
    ix = open_dataset(ds)
    got = ix.query("train", q="row 1")
    assert got["total"] == 1 and got["rows"][0]["teacher_tokens"] == 7  # quality.completion_tokens stands in
    assert ix.meta()["splits"]["train"]["flags"]["no_gold"] == 3


def test_open_dataset_reads_a_split_saved_in_several_shards(tmp_path):
    from datasets import Dataset, DatasetDict

    path = tmp_path / "ds"  # several Arrow files -> several chunks: the last-user-message index must stay aligned
    DatasetDict({"train": Dataset.from_list(TRAIN)}).save_to_disk(str(path), num_shards={"train": 3})
    ix = open_dataset(path)
    assert ix.splits["train"].table.column("id").num_chunks == 3
    assert _ids(ix.query("train", q="what is 5 plus 5")) == ["s5:instruct:0"]
    assert _ids(ix.query("train", q="apples are")) == ["s3:cot:0"]
    assert [r["teacher_tokens"] for r in ix.query("train")["rows"]] == [5, 6, 7, 8, 9, 10]  # len(teacher_token_ids)


def test_open_dataset_handles_an_empty_split(tmp_path):
    from datasets import Dataset, DatasetDict

    full = Dataset.from_list([r | {"split": "train"} for r in TRAIN[:2]])
    path = tmp_path / "ds"  # built the way distill/data/dataset.py builds splits: one table, a filter per split
    DatasetDict({name: full.filter(lambda v, name=name: v == name, input_columns="split").remove_columns("split")
                 for name in ("train", "removed")}).save_to_disk(str(path))
    ix = open_dataset(path)
    assert ix.meta()["splits"]["removed"] == {"rows": 0, "styles": {}, "reasons": {}, "flags": {f: 0 for f in ix.meta()["flags"]}}
    assert ix.query("removed", q="x") == {"total": 0, "offset": 0, "limit": 50, "rows": []}


def test_not_a_dataset_is_a_config_error_saying_how_to_fix(tmp_path, ds_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"is not an eakd dataset \(no dataset_dict.json\).*runs/<id>/dataset"):
        open_dataset(tmp_path / "empty")
    with pytest.raises(ConfigError, match="does not exist"):
        open_dataset(tmp_path / "missing")
    with pytest.raises(ConfigError, match=f"did you mean {re.escape(str(ds_dir))}"):
        open_dataset(ds_dir.parent)  # the run folder instead of its dataset/


# --- HTTP ---

def test_server_binds_loopback_only(server):
    assert server.server_address[0] == "127.0.0.1" and server.server_address[1] > 0
    assert server.url == f"http://127.0.0.1:{server.server_address[1]}/"


def test_http_index_page_is_the_viewer_with_security_headers(server):
    status, headers, body = _get(server, "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    page = body.decode()
    for needle in ('id="splits"', 'id="style"', 'id="flag"', 'id="reason"', 'id="search"', 'id="reasons"',
                   'id="rows"', 'id="prev"', 'id="next"', 'id="pager-info"', 'id="detail"'):
        assert needle in page
    assert headers["cache-control"] == "no-store" and headers["x-content-type-options"] == "nosniff"
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "unsafe" not in csp
    assert csp == content_security_policy(page)
    script = re.search(r"<script>(.*?)</script>", page, re.DOTALL).group(1)
    assert f"'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'" in csp


def test_viewer_page_never_uses_innerhtml_or_the_network(server):
    page = _get(server, "/")[2].decode()
    assert "innerHTML" not in page and "outerHTML" not in page and "insertAdjacentHTML" not in page
    assert "document.write" not in page and "eval(" not in page
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", page, re.IGNORECASE)  # no CDN, no external origin


def test_http_meta_and_rows_as_json(server):
    status, headers, body = _get(server, "/api/meta")
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert headers["cache-control"] == "no-store" and headers["x-content-type-options"] == "nosniff"
    assert json.loads(body)["splits"]["removed"]["rows"] == 4
    status, headers, body = _get(server, "/api/rows?split=removed&reason=contamination&style=cot&limit=5")
    data = json.loads(body)
    assert status == 200 and data["total"] == 1 and data["rows"][0]["removed_reason"].startswith("contamination: 5")
    status, _, body = _get(server, "/api/rows?split=train&q=APPLES&flag=no_gold&offset=0")
    assert status == 200 and [r["id"] for r in json.loads(body)["rows"]] == ["s3:cot:0"]
    status, _, body = _get(server, "/api/rows?split=train&style=&flag=&q=")  # the UI's "All"
    assert status == 200 and json.loads(body)["total"] == 6


def test_http_responses_never_contain_logprobs(server):
    for path in ("/api/meta", "/api/rows?split=train&limit=200", "/api/rows?split=removed", "/"):
        body = _get(server, path)[2].decode()
        assert LOGPROBS_MARK not in body and "teacher_logprobs" not in body and "teacher_token_ids" not in body


@pytest.mark.parametrize("path", ["/../etc/passwd", "/flows/viewer.py", "/viewer.html", "/api", "/api/rows/../meta",
                                  "/%2e%2e/%2e%2e/etc/passwd", "//etc/passwd", "/api/rows/",
                                  "/flows/"])
def test_http_unknown_paths_are_404(server, path):
    status, headers, body = _get(server, path)
    assert status == 404 and headers["content-type"].startswith("application/json")
    assert b"root:" not in body and b"import" not in body


@pytest.mark.parametrize("query, needle", [
    ("split=test", "unknown split"), ("split=train&flag=shiny", "unknown flag"), ("split=train&offset=-3", "offset"),
    ("split=train&limit=ten", "limit"), ("style=cot", "split is required"), ("split=train&sort=id", "unknown parameter"),
    ("split=train&split=removed", "once"),
])
def test_http_bad_params_are_400_with_the_reason(server, query, needle):
    status, _, body = _get(server, f"/api/rows?{query}")
    assert status == 400 and needle in json.loads(body)["error"]


def test_http_refuses_foreign_host_header(server):
    status, _, body = _get(server, "/api/meta", host="evil.example:80")
    assert status == 403 and b"splits" not in body
    assert _get(server, "/api/meta", host=f"localhost:{server.server_address[1]}")[0] == 200


def test_make_server_reports_a_port_in_use(ds_dir, server):
    port = server.server_address[1]
    with pytest.raises(ConfigError, match=f"port {port} on 127.0.0.1 is in use; pass --port 0"):
        make_server(ds_dir, port=port)


def test_make_server_rejects_a_non_dataset_before_binding(tmp_path):
    with pytest.raises(ConfigError, match="not an eakd dataset"):
        make_server(tmp_path, port=0)


@pytest.mark.parametrize("inherited", ["default", "ignored"])
def test_serve_prints_the_url_and_stops_cleanly_on_ctrl_c(ds_dir, inherited):
    """Also when the process starts with SIGINT ignored (a background job of a non-interactive shell;
    in CI, a parent that ignored it): the viewer restores Ctrl-C itself (found in CI, where it hung)."""
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if inherited == "ignored" else None
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from flows.viewer import serve; serve(sys.argv[1])",
                             str(ds_dir)], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=ignore)
    try:
        line = proc.stdout.readline()
        m = re.fullmatch(rf"viewing {re.escape(str(ds_dir))} at http://127\.0\.0\.1:(\d+)/ \(Ctrl-C to stop\)\n", line)
        assert m, line + proc.stderr.read() if proc.poll() is not None else line
        conn = http.client.HTTPConnection("127.0.0.1", int(m.group(1)), timeout=10)
        conn.request("GET", "/api/meta")
        assert conn.getresponse().status == 200
        conn.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
