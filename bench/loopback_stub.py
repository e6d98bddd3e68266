"""A loopback OpenAI-compatible stub that answers every chat completion at once: for load tests only.

It measures eakd's own client overhead, which a real teacher's generation time hides. It is a bare ASGI
callable served by uvicorn (httptools, one worker) on 127.0.0.1: ``POST /v1/chat/completions`` returns a
``chat.completion`` whose text is made from a hash of the request body (so answers differ, as a real
teacher's do, and no near-duplicate filter folds them), ``GET /v1/models`` lists the one model; anything
else is a 404. It counts what it answered at ``GET /stats``.

Run: ``python bench/loopback_stub.py --port 8799`` (bench/data_scaling.py starts it in a child process).
"""

from __future__ import annotations

import argparse
import hashlib
import json

MODEL = "stub"
_COUNT = {"chat": 0}
_WORDS = ["river", "stone", "maple", "copper", "lantern", "harbor", "meadow", "signal", "quartz", "willow",
          "ember", "falcon", "glacier", "orchid", "tundra", "velvet"]


def _answer(body: bytes) -> bytes:
    """A chat.completion for ``body``: eight words picked by the body's sha256, usage counted in words."""
    digest = hashlib.sha256(body).digest()
    text = " ".join(_WORDS[b % len(_WORDS)] for b in digest[:8]).capitalize() + "."
    return json.dumps({
        "id": "chatcmpl-" + digest[:8].hex(), "object": "chat.completion", "created": 0, "model": MODEL,
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": len(body) // 4, "completion_tokens": 9, "total_tokens": len(body) // 4 + 9},
    }).encode()


async def _read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def app(scope, receive, send) -> None:
    """The ASGI app: chat completions, the model list and the answered count."""
    if scope["type"] != "http":
        return
    body = await _read_body(receive)
    path = scope["path"]
    if scope["method"] == "POST" and path == "/v1/chat/completions":
        _COUNT["chat"] += 1
        status, payload = 200, _answer(body)
    elif path == "/v1/models":
        status, payload = 200, json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode()
    elif path == "/stats":
        status, payload = 200, json.dumps(_COUNT).encode()
    else:
        status, payload = 404, b'{"error": {"message": "not found"}}'
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, http="httptools", loop="uvloop", log_level="warning",
                access_log=False, backlog=4096)


if __name__ == "__main__":
    main()
