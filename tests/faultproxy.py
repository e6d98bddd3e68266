"""A fault-injecting HTTP proxy for tests: it sits in front of a real OpenAI-compatible server.

Each request is either forwarded untouched or answered with a fault drawn by a seeded RNG:
429 with and without ``Retry-After``, 500/502/503, a hang past the client's timeout, a connection
reset mid-body, malformed JSON, or a 200 with no choices. Faulted requests never reach the upstream,
so nothing is paid for twice. Opt-in faults: ``length`` forwards the request with ``max_tokens`` cut to
2, so the real server returns a truncated answer (``finish_reason=length``); ``401`` and ``404`` answer
like an endpoint refusing the key or not serving the model. ``api_key``: a request without
``Authorization: Bearer <api_key>`` gets a 401, as from a real endpoint, and never reaches the upstream
(so it needs none). When the upstream is
down (connection refused) the proxy drops the client's connection too, as the dead server would.
``counts["answered"]`` counts the upstream's 200s. Listens on 127.0.0.1 only; runs its own event loop
in a thread.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter

from aiohttp import ClientConnectionError, ClientSession, ClientTimeout, web

from loopback import LoopbackApp

FAULTS = ("429_retry_after", "429", "500", "502", "503", "hang", "reset", "malformed", "empty_choices")


class FaultProxy:
    def __init__(self, upstream: str, rate: float, seed: int = 0, hang_s: float = 30.0,
                 faults: tuple[str, ...] = FAULTS, fault_first: int = 0, reject_response_format: bool = False,
                 api_key: str | None = None):
        self.upstream = upstream.rstrip("/")  # e.g. http://127.0.0.1:8000 (no /v1)
        self.rate, self.hang_s, self.faults = rate, hang_s, faults
        self.fault_first = fault_first  # the first N attempts are all faulted (a burst of pushback)
        self.reject_response_format = reject_response_format  # act like a server without structured outputs
        self.api_key = api_key  # None: no key checked
        self.attempts = 0
        self.rng = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self.forwarded: list[dict] = []  # the JSON body of every request passed on to the server
        self.arrivals: list[float] = []  # time.monotonic() of every request passed on
        self.port: int | None = None
        self._server = LoopbackApp(self._app, self._close)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.attempts += 1
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            self.counts["unauthorized"] += 1
            return web.json_response({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                                "code": "invalid_api_key"}}, status=401)
        if self.reject_response_format and b'"response_format"' in body:
            self.counts["rejected_response_format"] += 1
            return web.json_response({"error": {"message": "response_format is not supported"}}, status=400)
        burst = self.attempts <= self.fault_first
        fault = self.rng.choice(self.faults) if burst or self.rng.random() < self.rate else None
        self.counts[fault or "forwarded"] += 1
        if fault == "429_retry_after":
            return web.json_response({"error": {"message": "slow down"}}, status=429, headers={"Retry-After": "0.2"})
        if fault in ("401", "404", "429", "500", "502", "503"):
            return web.json_response({"error": {"message": f"injected {fault}"}}, status=int(fault))
        if fault == "hang":
            await asyncio.sleep(self.hang_s)
            return web.Response(status=504)
        if fault == "malformed":
            return web.Response(status=200, body=b'{"id": "x", "choices": [', content_type="application/json")
        if fault == "empty_choices":
            return web.json_response({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                                      "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 0,
                                                               "total_tokens": 1}})
        if fault == "reset":
            resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json",
                                                           "Content-Length": "4096"})
            await resp.prepare(request)
            await resp.write(b'{"id": "chatcmpl-partial", "choi')
            request.transport.close()  # the client sees the connection drop mid-body
            return resp
        if fault == "length":
            data = json.loads(body)
            data["max_tokens"] = 2
            body = json.dumps(data).encode()
        if body:
            self.arrivals.append(time.monotonic())
            try:
                self.forwarded.append(json.loads(body))
            except ValueError:
                pass
        try:
            async with self._session.request(request.method, self.upstream + request.path_qs, data=body,
                                             headers={"Content-Type": "application/json"}) as up:
                payload = await up.read()
        except (ClientConnectionError, asyncio.TimeoutError):  # the server is down: so is this connection
            self.counts["upstream_down"] += 1
            request.transport.close()
            return web.Response(status=502)
        if up.status == 200:
            self.counts["answered"] += 1
        return web.Response(status=up.status, body=payload, content_type="application/json")

    async def _app(self) -> web.Application:
        self._session = ClientSession(timeout=ClientTimeout(total=600))
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _close(self) -> None:
        await self._session.close()

    def __enter__(self) -> FaultProxy:
        self.port = self._server.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.stop()


def summary(counts: Counter) -> str:
    return json.dumps(dict(counts), sort_keys=True)
