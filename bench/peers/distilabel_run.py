"""Send a JSONL of chat requests through distilabel's OpenAILLM (its async OpenAI-compatible client).

Run with the distilabel peer venv's python (see setup_peers.sh), never the project venv:

    VENV/distilabel/bin/python bench/peers/distilabel_run.py --requests REQ.jsonl \
        --base-url http://127.0.0.1:PORT/v1 --model MODEL --concurrency N --out RESULT.json

Internally: ``OpenAILLM(model=..., base_url=..., api_key="EMPTY").load()`` builds an
``openai.AsyncOpenAI`` client, and every request is one ``await llm.agenerate(input=messages, ...)``,
i.e. ``client.chat.completions.create(messages=...)`` with the row's own chat messages (no templating
by distilabel). This is the same call that distilabel's ``AsyncLLM.generate`` (and so a Pipeline's
``TextGeneration`` step) makes for each row; distilabel itself bounds concurrency only by batch
(``generate`` gathers one whole ``input_batch_size`` batch, then the next), so:

* ``--mode semaphore`` (default): all requests are gathered on the LLM's event loop behind an
  ``asyncio.Semaphore(concurrency)``: at most N in flight, a new one as soon as one finishes.
* ``--mode batched``: distilabel's own batching: chunks of N requests, each chunk gathered as
  ``AsyncLLM.generate`` does, the next chunk only after the slowest of the previous one (what a
  Pipeline with ``TextGeneration(input_batch_size=N)`` does inside one step replica).

``max_tokens`` goes as distilabel's ``max_new_tokens``, ``temperature`` as is, and ``seed`` (which
``agenerate`` has no argument for) in ``extra_body``. No Pipeline is built, so distilabel's
pipeline cache (``~/.cache/distilabel``) is not used at all; distilabel has no telemetry.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time


def _offline_env() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["DO_NOT_TRACK"] = "1"
    os.environ.setdefault("DISTILABEL_LOG_LEVEL", "WARNING")
    os.environ.pop("OPENAI_BASE_URL", None)
    # aiohttp (trust_env=True) / httpx honour *_PROXY: never route the local server through a proxy
    no_proxy = [h for h in os.environ.get("NO_PROXY", os.environ.get("no_proxy", "")).split(",") if h]
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = ",".join(no_proxy + ["127.0.0.1", "localhost", "::1"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", required=True)
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--concurrency", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--mode", choices=("semaphore", "batched"), default="semaphore")
    ap.add_argument("--max-retries", type=int, default=None, help="OpenAILLM max_retries (default: distilabel's own, 6)")
    ap.add_argument("--timeout", type=int, default=None, help="OpenAILLM timeout in s (default: distilabel's own, 120)")
    args = ap.parse_args(argv)

    with open(args.requests) as f:
        reqs = [json.loads(line) for line in f if line.strip()]
    ids = [str(r["id"]) for r in reqs]
    if len(set(ids)) != len(ids):
        raise SystemExit("request ids must be unique")

    _offline_env()
    import warnings

    # distilabel 1.5.3 under pydantic >= 2.12 warns once per model class about Field(default=None) metadata
    warnings.filterwarnings("ignore", message=".*attribute with value None was provided to the `Field\\(\\)` function.*")
    import distilabel  # noqa: E402
    from distilabel.models.llms import OpenAILLM  # noqa: E402

    kw = {}
    if args.max_retries is not None:
        kw["max_retries"] = args.max_retries
    if args.timeout is not None:
        kw["timeout"] = args.timeout
    llm = OpenAILLM(model=args.model, base_url=args.base_url, api_key="EMPTY", **kw)
    llm.load()

    def gen_kwargs(r: dict) -> dict:
        out: dict = {}
        if r.get("max_tokens") is not None:
            out["max_new_tokens"] = int(r["max_tokens"])
        if r.get("temperature") is not None:
            out["temperature"] = float(r["temperature"])
        if r.get("seed") is not None:
            out["extra_body"] = {"seed": int(r["seed"])}
        return out

    inputs = [[{"role": m["role"], "content": m["content"]} for m in r["messages"]] for r in reqs]
    kwargs = [gen_kwargs(r) for r in reqs]
    results: list = [None] * len(reqs)
    errors: dict[str, str] = {}

    async def one(i: int) -> None:
        try:
            results[i] = await llm.agenerate(input=inputs[i], **kwargs[i])
        except Exception as e:  # noqa: BLE001 - counted as not ok
            errors[ids[i]] = f"{type(e).__name__}: {e}"

    async def run_semaphore() -> None:
        sem = asyncio.Semaphore(args.concurrency)

        async def bounded(i: int) -> None:
            async with sem:
                await one(i)

        await asyncio.gather(*(asyncio.create_task(bounded(i)) for i in range(len(reqs))))

    async def run_batched() -> None:
        for s in range(0, len(reqs), args.concurrency):
            await asyncio.gather(*(asyncio.create_task(one(i)) for i in range(s, min(s + args.concurrency, len(reqs)))))

    loop = llm.event_loop
    t0 = time.perf_counter()
    loop.run_until_complete(run_semaphore() if args.mode == "semaphore" else run_batched())
    wall_s = time.perf_counter() - t0

    texts: dict[str, str] = {}
    ctoks = 0
    have_usage = False
    for i, out in enumerate(results):
        if not out:
            continue
        gens = out.get("generations") or []
        if gens and gens[0] is not None:
            texts[ids[i]] = gens[0]
        stats = out.get("statistics") or {}
        toks = stats.get("output_tokens") or []
        if toks:
            ctoks += int(toks[0])
            have_usage = True

    result = {
        "tool": "distilabel",
        "version": distilabel.__version__,
        "mode": args.mode,
        "n": len(reqs),
        "ok": len(texts),
        "wall_s": round(wall_s, 4),
        "completion_tokens": ctoks if have_usage else None,
        "texts": texts,
    }
    if errors:
        result["errors"] = dict(list(errors.items())[:20])
    with open(args.out, "w") as f:
        json.dump(result, f)
    print(json.dumps({k: v for k, v in result.items() if k not in ("texts", "errors")}))
    llm.unload()
    return 0 if texts else 1  # partial success is data (see "ok"); nothing at all is a failure


if __name__ == "__main__":
    sys.exit(main())
