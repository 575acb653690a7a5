"""A loopback HTTP front that enforces Docker Hub style pull budgets before a real registry.

It behaves as Docker Hub documents its limits ("Docker Hub usage and limits"):

- a pull is a GET of a manifest; HEADs of manifests and blob GETs are free;
- each identity (the user of a Basic ``Authorization``, else ``anonymous``) has ``limit``
  pulls per window of ``window`` seconds; the window starts with the identity's first
  request and a new one starts once it has passed;
- every manifest answer carries ``RateLimit-Limit: L;w=W`` and ``RateLimit-Remaining: R;w=W``;
- a pull over the budget is answered 429 ``TOOMANYREQUESTS`` with ``Retry-After`` (seconds
  to the end of the window) and the budget headers.

With ``users`` set, a request without valid Basic credentials gets 401 and a Basic
challenge, so that clients authenticate as they do against Docker Hub's registry. The
``Authorization`` header is not forwarded: the registry behind is open.

Fault modes for tests: ``storm(n)`` answers the next ``n`` manifest requests 429 with
``Retry-After: 0`` (a registry shedding load); ``refuse_all(retry_after)`` answers every
manifest request 429 with that ``Retry-After`` (seconds or an HTTP-date).
"""

from __future__ import annotations

import base64
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from tests.faults.shims import _HOP, _Threaded


@dataclass
class _Window:
    started: float
    pulls: int = 0


@dataclass
class Pull:
    """One counted manifest GET: who, in which of their windows, answered how."""

    identity: str
    window: int
    status: int
    at: float


@dataclass
class _Storm:
    left: int = 0
    on_first_success: Callable[[], Any] | None = None
    seen: list[Any] = field(default_factory=list)


class QuotaFront(_Threaded):
    """``QuotaFront(upstream_url, limit=…, window=…, users={…})``; ``close()`` at the end."""

    def __init__(
        self,
        upstream: str,
        *,
        limit: int | None = None,
        window: float = 21600,
        users: dict[str, str] | None = None,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.limit = limit
        self.window = window
        self.users = users or {}
        self.pulls: list[Pull] = []
        self.refused: list[tuple[float, str, str]] = []  # (time, method, path) of 429s
        self.forwarded: list[tuple[float, str, str, str]] = []  # (time, identity, method, path)
        self._windows: dict[str, list[_Window]] = {}
        self._lock = threading.Lock()
        self._storm = _Storm()
        self._refuse_all: str | None = None
        self._session: aiohttp.ClientSession | None = None
        super().__init__()

    # -- control and inspection (from the test's thread) ------------------------------------
    def storm(self, n: int, on_first_success: Callable[[], Any] | None = None) -> None:
        """429 + ``Retry-After: 0`` for the next ``n`` manifest requests; then, on the first
        request let through, record ``on_first_success()`` in ``storm_seen``."""
        with self._lock:
            self._storm = _Storm(n, on_first_success)

    @property
    def storm_seen(self) -> list[Any]:
        return list(self._storm.seen)

    def refuse_all(self, retry_after: str | None) -> None:
        with self._lock:
            self._refuse_all = retry_after

    def pulls_per_window(self) -> dict[tuple[str, int], int]:
        """Pulls let through, by (identity, window number)."""
        out: dict[tuple[str, int], int] = {}
        for p in self.pulls:
            if p.status != 429:
                out[(p.identity, p.window)] = out.get((p.identity, p.window), 0) + 1
        return out

    def window_over(self, identity: str) -> bool:
        """The identity's current window has ended (its next pull starts a new one)."""
        with self._lock:
            windows = self._windows.get(identity)
            return bool(windows) and time.monotonic() >= windows[-1].started + self.window

    # -- the server ---------------------------------------------------------------------------
    async def on_start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)

    async def on_stop(self) -> None:
        if self._session is not None:
            await self._session.close()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    def _identity(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            return user if self.users.get(user) == password else None
        return None if self.users else "anonymous"

    def _window(self, identity: str, now: float) -> tuple[int, _Window]:
        windows = self._windows.setdefault(identity, [])
        if not windows or now >= windows[-1].started + self.window:
            windows.append(_Window(now))
        return len(windows) - 1, windows[-1]

    def _budget_headers(self, w: _Window) -> dict[str, str]:
        if self.limit is None:
            return {}
        left = max(0, self.limit - w.pulls)
        return {
            "RateLimit-Limit": f"{self.limit};w={self.window:g}",
            "RateLimit-Remaining": f"{left};w={self.window:g}",
        }

    def _too_many(self, request: web.Request, headers: dict[str, str]) -> web.Response:
        self.refused.append((time.monotonic(), request.method, request.path))
        return web.json_response(
            {"errors": [{"code": "TOOMANYREQUESTS", "message": "pull rate limit exceeded"}]},
            status=429,
            headers=headers,
        )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        identity = self._identity(request)
        if identity is None:
            await request.read()
            return web.json_response(
                {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                status=401,
                headers={"WWW-Authenticate": 'Basic realm="quota-front"'},
            )
        now = time.monotonic()
        manifest = "/manifests/" in request.path
        extra: dict[str, str] = {}
        with self._lock:
            number, w = self._window(identity, now)
            if manifest:
                extra = self._budget_headers(w)
                if self._refuse_all is not None:
                    return self._too_many(request, {**extra, "Retry-After": self._refuse_all})
                if self._storm.left > 0:
                    self._storm.left -= 1
                    return self._too_many(request, {**extra, "Retry-After": "0"})
                if self._storm.on_first_success is not None:
                    self._storm.seen.append(self._storm.on_first_success())
                    self._storm.on_first_success = None
            if manifest and request.method == "GET" and self.limit is not None:
                if w.pulls >= self.limit:
                    wait = math.ceil(w.started + self.window - now)
                    self.pulls.append(Pull(identity, number, 429, now))
                    return self._too_many(request, {**extra, "Retry-After": str(max(1, wait))})
                w.pulls += 1
                self.pulls.append(Pull(identity, number, 200, now))
                extra = self._budget_headers(w)
            self.forwarded.append((now, identity, request.method, request.path))
        return await self._forward(request, extra)

    async def _forward(self, request: web.Request, extra: dict[str, str]) -> web.StreamResponse:
        assert self._session is not None
        drop = _HOP | {"authorization"}
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
            out.headers.update(extra)
            await out.prepare(request)
            try:
                if request.method != "HEAD":
                    async for chunk in up.content.iter_chunked(1 << 20):
                        await out.write(chunk)
                await out.write_eof()
            except ConnectionError:
                pass  # the client hung up
            return out
