"""A Batch API front for tests: OpenAI's ``/v1/files`` + ``/v1/batches`` in front of a real server.

vLLM's OpenAI-compatible server has no Batch API, so this proxy provides one: each line of an
uploaded batch file is forwarded to the real server's ``/v1/chat/completions`` and its answer is
written to the batch's output file, exactly as the hosted Batch APIs lay it out. It exists to inject
the faults a hosted batch shows: a batch that expires part way (``expire_after`` lines, then
``expired`` with a partial output file), line errors (``fail_first``: the first N forwarded lines of
the first batch get a 500 in the error file; ``bad_ids``: custom_ids answered 400), and a batch
that is still running when the client stops waiting (``hold_s``). It counts every line it forwards
by ``custom_id``, so a test can show nothing was paid for twice. Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

from aiohttp import ClientSession, web

from loopback import LoopbackApp


class BatchAPI:
    def __init__(self, upstream: str, expire_after: int | None = None, fail_first: int = 0,
                 bad_ids: frozenset[str] = frozenset(), hold_s: float = 0.0):
        self.upstream = upstream.rstrip("/")  # e.g. http://127.0.0.1:8000 (no /v1)
        self.expire_after, self.fail_first, self.bad_ids, self.hold_s = expire_after, fail_first, bad_ids, hold_s
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.forwarded: Counter[str] = Counter()  # custom_id -> lines sent to the real server
        self.port: int | None = None
        self._tasks: set[asyncio.Task] = set()
        self._server = LoopbackApp(self._app)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _file(self, data: bytes, purpose: str, name: str) -> dict:
        fid = f"file-{len(self.files) + 1}"
        self.files[fid] = data
        return {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()), "filename": name,
                "purpose": purpose, "status": "processed"}

    async def _upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        f = form["file"]
        return web.json_response(self._file(f.file.read(), str(form.get("purpose", "batch")), f.filename))

    async def _content(self, request: web.Request) -> web.Response:
        fid = request.match_info["fid"]
        if fid not in self.files:
            return web.json_response({"error": {"message": f"no file {fid}"}}, status=404)
        return web.Response(body=self.files[fid], content_type="application/octet-stream")

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("input_file_id") not in self.files:
            return web.json_response({"error": {"message": "unknown input_file_id"}}, status=400)
        bid = f"batch-{len(self.batches) + 1}"
        self.batches[bid] = {"id": bid, "object": "batch", "endpoint": body["endpoint"], "errors": None,
                             "input_file_id": body["input_file_id"], "completion_window": body["completion_window"],
                             "status": "in_progress", "output_file_id": None, "error_file_id": None,
                             "created_at": int(time.time()), "request_counts": {"total": 0, "completed": 0, "failed": 0}}
        task = asyncio.get_running_loop().create_task(self._work(bid, first=len(self.batches) == 1))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response(self.batches[bid])

    async def _retrieve(self, request: web.Request) -> web.Response:
        bid = request.match_info["bid"]
        if bid not in self.batches:
            return web.json_response({"error": {"message": f"no batch {bid}"}}, status=404)
        return web.json_response(self.batches[bid])

    async def _work(self, bid: str, first: bool) -> None:
        b = self.batches[bid]
        lines = [json.loads(x) for x in self.files[b["input_file_id"]].decode().splitlines() if x.strip()]
        b["request_counts"]["total"] = len(lines)
        out, err, status = [], [], "completed"
        async with ClientSession() as s:
            for i, line in enumerate(lines):
                cid = line["custom_id"]
                if self.expire_after is not None and first and i >= self.expire_after:
                    status = "expired"  # the rest never ran
                    break
                if cid in self.bad_ids:
                    err.append({"id": f"r{i}", "custom_id": cid, "response": {"status_code": 400, "body": {
                        "error": {"message": "injected bad request"}}}, "error": None})
                    continue
                if first and i < self.fail_first:
                    err.append({"id": f"r{i}", "custom_id": cid, "response": {"status_code": 500, "body": {
                        "error": {"message": "injected server error"}}}, "error": None})
                    continue
                self.forwarded[cid] += 1
                async with s.post(self.upstream + line["url"], json=line["body"]) as r:
                    out.append({"id": f"r{i}", "custom_id": cid, "error": None,
                                "response": {"status_code": r.status, "request_id": f"r{i}", "body": await r.json()}})
        await asyncio.sleep(self.hold_s)
        b["request_counts"].update(completed=len(out), failed=len(err))
        dump = lambda rows: ("\n".join(json.dumps(x) for x in rows) + "\n").encode()  # noqa: E731
        if out:
            b["output_file_id"] = self._file(dump(out), "batch_output", f"{bid}_output.jsonl")["id"]
        if err:
            b["error_file_id"] = self._file(dump(err), "batch_output", f"{bid}_error.jsonl")["id"]
        b["status"] = status

    async def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_post("/v1/files", self._upload)
        app.router.add_get("/v1/files/{fid}/content", self._content)
        app.router.add_post("/v1/batches", self._create)
        app.router.add_get("/v1/batches/{bid}", self._retrieve)
        return app

    def __enter__(self) -> BatchAPI:
        self.port = self._server.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.stop()
