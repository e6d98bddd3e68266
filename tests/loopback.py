"""An aiohttp app served on 127.0.0.1 (a free port) by its own event loop in a daemon thread: the
plumbing shared by the test servers in front of the real vLLM server (faultproxy, batchapi)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

from aiohttp import web


class LoopbackApp:
    def __init__(self, make_app: Callable[[], Awaitable[web.Application]],
                 on_close: Callable[[], Awaitable[None]] | None = None):
        self.make_app, self.on_close = make_app, on_close
        self.port: int | None = None
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            self._runner = web.AppRunner(await self.make_app())
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]
            self._ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def start(self) -> int:
        """Serve; returns the port."""
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the test server did not start within 10 s")
        return self.port

    def stop(self) -> None:
        async def stop() -> None:
            if self.on_close is not None:
                await self.on_close()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
