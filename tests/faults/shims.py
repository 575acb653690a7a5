"""Small misbehaving HTTP servers for fault tests (aiohttp, each in its own thread).

``RateLimitShim`` sits in front of a real registry and forwards everything, except that it
answers the first N requests with 429 + ``Retry-After``, can advertise a Docker Hub
style pull quota (``RateLimit-Limit``/``RateLimit-Remaining``) and can drop ``Range``
headers (a server without partial GETs). ``BrokenRegistry`` is not
a registry at all: a handful of routes that are each broken in one way (a manifest over
the size cap, an endless error body, a ``Link`` header that always points back).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}


class _Threaded:
    """Runs an aiohttp app on 127.0.0.1 in a daemon thread; ``close()`` stops it."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self.port = 0
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("shim did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> web.Application:
        raise NotImplementedError

    async def on_start(self) -> None:
        """Hook for subclasses that need the loop (client sessions)."""

    async def on_stop(self) -> None:
        """Counterpart of ``on_start``."""

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)

        async def boot() -> None:
            await self.on_start()
            self._runner = web.AppRunner(self.app(), access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            started.set()

        self._loop.run_until_complete(boot())
        self._loop.run_forever()

    def close(self) -> None:
        async def stop() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
            await self.on_stop()

        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


class RateLimitShim(_Threaded):
    """Forwards to ``upstream`` after refusing the first ``refuse`` requests with 429."""

    def __init__(
        self,
        upstream: str,
        *,
        refuse: int = 0,
        retry_after: float | None = 1.0,
        quota: tuple[int, int, int] | None = None,  # (limit, remaining, window seconds)
        ignore_range: bool = False,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.refuse = refuse
        self.retry_after = retry_after
        self.quota = quota
        self.ignore_range = ignore_range  # drop Range: a server without partial GETs
        self.pulls = 0
        self.refused: list[float] = []  # monotonic times of the 429s
        self.forwarded: list[tuple[float, str, str]] = []  # (time, method, path)
        self._session: aiohttp.ClientSession | None = None
        super().__init__()

    async def on_start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)

    async def on_stop(self) -> None:
        if self._session is not None:
            await self._session.close()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    def _quota_headers(self) -> dict[str, str]:
        if self.quota is None:
            return {}
        limit, remaining, window = self.quota
        left = max(0, remaining - self.pulls)
        return {
            "RateLimit-Limit": f"{limit};w={window}",
            "RateLimit-Remaining": f"{left};w={window}",
        }

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        if len(self.refused) < self.refuse:
            await request.read()
            self.refused.append(loop.time())
            headers = self._quota_headers()
            if self.retry_after is not None:
                headers["Retry-After"] = f"{self.retry_after:g}"
            return web.json_response(
                {"errors": [{"code": "TOOMANYREQUESTS", "message": "slow down"}]},
                status=429,
                headers=headers,
            )
        assert self._session is not None
        if request.method == "GET" and "/manifests/" in request.path:
            self.pulls += 1  # Docker Hub counts manifest GETs as pulls
        self.forwarded.append((loop.time(), request.method, request.path))
        drop = _HOP | ({"range"} if self.ignore_range else set())
        headers = {k: v for k, v in request.headers.items() if k.lower() not in drop}
        body: Any = request.content.iter_chunked(1 << 20) if request.body_exists else None
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as up:
            out = web.StreamResponse(status=up.status)
            for k, v in up.headers.items():
                if k.lower() not in _HOP:
                    out.headers.add(k, v)
            out.headers.update(self._quota_headers())
            await out.prepare(request)
            try:
                if request.method != "HEAD":
                    async for chunk in up.content.iter_chunked(1 << 20):
                        await out.write(chunk)
                await out.write_eof()
            except ConnectionError:
                pass  # the client hung up (syncd stops reading a 200 it asked 206 of)
            return out


class BrokenRegistry(_Threaded):
    """Routes that break the protocol in one way each; counts what it was asked."""

    MANIFEST_BYTES = 5 * 1024 * 1024
    ENDLESS_LIMIT = 256 * 1024 * 1024  # an "endless" body still ends, so the test does

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.error_bytes_sent: list[int] = []
        super().__init__()

    def app(self) -> web.Application:
        app = web.Application()
        routes: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
            ("GET", "/v2/", self._ping),
            ("*", "/v2/huge/manifests/{ref}", self._huge_manifest),
            ("*", "/v2/noisy/manifests/{ref}", self._endless_error),
            ("GET", "/v2/loop/tags/list", self._link_loop),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
        return app

    def _note(self, request: web.Request) -> None:
        self.requests.append((request.method, request.path))

    async def _ping(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({})

    async def _huge_manifest(self, request: web.Request) -> web.StreamResponse:
        self._note(request)
        pad = "x" * self.MANIFEST_BYTES
        body = (
            '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
            f'"annotations":{{"pad":"{pad}"}},"layers":[]}}'
        ).encode()
        headers = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
        if request.method == "HEAD":
            headers["Docker-Content-Digest"] = "sha256:" + "0" * 64
            return web.Response(status=200, headers=headers)
        return web.Response(body=body, headers=headers)

    async def _endless_error(self, request: web.Request) -> web.StreamResponse:
        self._note(request)
        out = web.StreamResponse(status=500, headers={"Content-Type": "text/plain"})
        await out.prepare(request)
        sent = 0
        piece = b"e" * 65536
        try:
            while sent < self.ENDLESS_LIMIT:
                await out.write(piece)
                sent += len(piece)
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self.error_bytes_sent.append(sent)
        return out

    async def _link_loop(self, request: web.Request) -> web.StreamResponse:
        self._note(request)
        # Always "more", always the same page: a loop only a page limit stops.
        return web.json_response(
            {"name": "loop", "tags": ["a"]},
            headers={"Link": '</v2/loop/tags/list?last=a&n=1000>; rel="next"'},
        )
