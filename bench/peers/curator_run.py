"""Send a JSONL of chat requests through bespokelabs-curator's OpenAI-compatible online path.

Run with the curator peer venv's python (see setup_peers.sh), never the project venv:

    VENV/curator/bin/python bench/peers/curator_run.py --requests REQ.jsonl \
        --base-url http://127.0.0.1:PORT/v1 --model MODEL --concurrency N --out RESULT.json

Internally: one ``curator.LLM(backend="openai")`` whose request processor is
``OpenAIOnlineRequestProcessor`` (aiohttp POSTs to ``{base_url}/chat/completions``). Concurrency is
curator's own ``max_concurrent_requests`` backend param (an asyncio semaphore around each request);
its request/token-per-minute buckets are set to 10**9 so they never throttle. Per-request
``max_tokens``/``temperature``/``seed`` go through curator's row-level ``generation_params`` column.
The messages are the row's own chat messages (no templating by curator; the server applies the
model's chat template as for any chat request). Curator's cache is pointed at a fresh temp dir and
disabled (CURATOR_DISABLE_CACHE=1 gives each run a random fingerprint), its telemetry is off, and its
hosted viewer is off.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime


def _offline_env(cache_dir: str) -> None:
    """Everything that must be in the environment before curator (and litellm) are imported."""
    os.environ["TELEMETRY_ENABLED"] = "false"  # curator's PostHog telemetry (telemetry/client.py)
    os.environ.pop("CURATOR_VIEWER", None)  # no hosted viewer session (client.py)
    os.environ.pop("BESPOKE_API_KEY", None)
    os.environ["CURATOR_DISABLE_RICH_DISPLAY"] = "1"  # plain logging, no live rich table
    os.environ["CURATOR_DISABLE_CACHE"] = "1"  # random run fingerprint: never a cached answer
    os.environ["CURATOR_CACHE_DIR"] = cache_dir  # and a fresh, throwaway cache dir on top
    os.environ["BESPOKE_CURATOR_TRACKER_DISABLED"] = "1"
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # litellm would fetch its cost map from GitHub
    os.environ["LITELLM_TELEMETRY"] = "False"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["DO_NOT_TRACK"] = "1"
    os.environ.pop("OPENAI_BASE_URL", None)
    # aiohttp (trust_env=True) / httpx honour *_PROXY: never route the local server through a proxy
    no_proxy = [h for h in os.environ.get("NO_PROXY", os.environ.get("no_proxy", "")).split(",") if h]
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = ",".join(no_proxy + ["127.0.0.1", "localhost", "::1"])
    # curator's OpenAI processor calls tiktoken.get_encoding("cl100k_base") (for its token-bucket
    # estimates), which downloads the BPE file unless cached: use the copy that litellm bundles.
    import importlib.util

    spec = importlib.util.find_spec("litellm")
    if spec and spec.submodule_search_locations and "TIKTOKEN_CACHE_DIR" not in os.environ:
        tok = os.path.join(list(spec.submodule_search_locations)[0], "litellm_core_utils", "tokenizers")
        if os.path.isdir(tok):
            os.environ["TIKTOKEN_CACHE_DIR"] = tok


def _ts(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", required=True)
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--concurrency", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-retries", type=int, default=None, help="curator's max_retries (default: curator's own, 10)")
    ap.add_argument("--request-timeout", type=int, default=None, help="seconds per request (default: curator's own, 600)")
    args = ap.parse_args(argv)

    with open(args.requests) as f:
        reqs = [json.loads(line) for line in f if line.strip()]
    ids = [str(r["id"]) for r in reqs]
    if len(set(ids)) != len(ids):
        raise SystemExit("request ids must be unique")

    cache_dir = tempfile.mkdtemp(prefix="curator_peer_")
    _offline_env(cache_dir)

    from bespokelabs import curator  # noqa: E402  (after the environment is set)

    class ChatPassthrough(curator.LLM):
        # The full chat.completion object comes back to parse(), so usage is per row.
        return_completions_object = True

        def prompt(self, row):
            return [{"role": m["role"], "content": m["content"]} for m in row["messages"]]

        def parse(self, row, response):
            choice = (response.get("choices") or [{}])[0]
            usage = response.get("usage") or {}
            return {
                "id": row["id"],
                "text": (choice.get("message") or {}).get("content"),
                "finish_reason": choice.get("finish_reason"),
                "completion_tokens": usage.get("completion_tokens"),
            }

    backend_params = {
        "base_url": args.base_url,
        "api_key": "EMPTY",
        "max_concurrent_requests": args.concurrency,
        "max_requests_per_minute": 10**9,
        "max_tokens_per_minute": 10**9,
        "require_all_responses": False,
        # default ["content_filter", "length"] would treat every max_tokens-truncated answer as a
        # failure and retry it; the benchmark caps max_tokens, so a "length" finish is a success.
        "invalid_finish_reasons": ["content_filter"],
    }
    if args.max_retries is not None:
        backend_params["max_retries"] = args.max_retries
    if args.request_timeout is not None:
        backend_params["request_timeout"] = args.request_timeout

    llm = ChatPassthrough(model_name=args.model, backend="openai", backend_params=backend_params)
    # Curator reads per-row generation params from a JSON-string column named generation_params.
    rows = [
        {
            "id": str(r["id"]),
            "messages": [{"role": m["role"], "content": m["content"]} for m in r["messages"]],
            "generation_params": json.dumps(
                {k: r[k] for k in ("max_tokens", "temperature", "seed") if r.get(k) is not None}
            ),
        }
        for r in reqs
    ]

    t_call0 = time.perf_counter()
    wall0 = time.time()
    response = llm(rows)
    call_s = time.perf_counter() - t_call0
    wall1 = time.time()

    texts: dict[str, str] = {}
    ctoks = 0
    have_usage = False
    for row in response.dataset:
        if row.get("text") is None:
            continue
        texts[row["id"]] = row["text"]
        if row.get("completion_tokens") is not None:
            ctoks += int(row["completion_tokens"])
            have_usage = True

    # "first request sent -> last response": curator stamps every response with its request's
    # created_at (set just before it is sent) and finished_at. Fall back to the whole call.
    starts, ends = [], []
    for name in sorted(os.listdir(response.cache_dir)):
        if name.startswith("responses_") and name.endswith(".jsonl"):
            with open(os.path.join(response.cache_dir, name)) as f:
                for line in f:
                    rec = json.loads(line)
                    s, e = _ts(rec.get("created_at")), _ts(rec.get("finished_at"))
                    if s is not None and e is not None and wall0 - 1 <= s <= wall1 + 1:
                        starts.append(s)
                        ends.append(e)
    wall_s = (max(ends) - min(starts)) if starts else call_s

    shutil.rmtree(cache_dir, ignore_errors=True)

    result = {
        "tool": "curator",
        "version": curator.__version__,
        "n": len(reqs),
        "ok": len(texts),
        "wall_s": round(wall_s, 4),
        "call_s": round(call_s, 4),  # the whole llm(rows) call: curator's request-file prep + parsing too
        "completion_tokens": ctoks if have_usage else None,
        "texts": texts,
    }
    with open(args.out, "w") as f:
        json.dump(result, f)
    print(json.dumps({k: v for k, v in result.items() if k != "texts"}))
    return 0 if texts else 1  # partial success is data (see "ok"); nothing at all is a failure


if __name__ == "__main__":
    sys.exit(main())
