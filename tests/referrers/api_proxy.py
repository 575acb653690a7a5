"""A registry front with the OCI 1.1 referrers API (or, with ``inject``, a front whose
referrers endpoint answers what a registry without the API may send).

Debian's docker-registry 2.8.2 has no referrers API. This aiohttp server answers only
``GET /v2/<name>/referrers/<digest>`` itself, from the manifests with a ``subject`` that
were pushed through it, and passes every other request on to a real registry unchanged.
It pages its answers (``Link``) and applies the ``artifactType`` filter only when told to,
so both the server-filtered and the client-filtered paths are exercised. It runs in a
thread with its own event loop, so the synchronous push helpers can talk to it while a
test's loop runs syncd.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from tests.helpers.registry import Registry, free_port

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "upgrade"}


class ReferrersFront:
    """``url`` proxies to ``upstream``; ``referrers_requests`` counts API calls."""

    def __init__(
        self,
        upstream: Registry,
        *,
        page_size: int = 1,
        filters: bool = True,
        inject: tuple[int, bytes, str] | None = None,
        answers: dict[str, tuple[int, bytes, str]] | None = None,
    ) -> None:
        self.upstream = upstream
        # (status, body, content type) to answer every referrers request with instead:
        # what registries without the API really send (400/405/406, an HTML page).
        self.inject = inject
        # path -> (status, body, content type): other endpoints answered by the front
        # (a registry without ``/v2/_catalog``).
        self.answers = dict(answers or {})
        self.page_size = page_size
        self.filters = filters
        self.port = free_port()
        self.referrers_requests = 0
        # (repository, subject digest) -> descriptors, in push order
        self._index: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._session: aiohttp.ClientSession | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ReferrersFront:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("referrers front did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def listed(self, repository: str, subject: str) -> list[dict[str, Any]]:
        return list(self._index.get((repository, subject), []))

    # -- the server ------------------------------------------------------------------------
    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            self._session = session
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._ready.set()
            await self._stop.wait()
            await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path in self.answers:
            status, payload, ctype = self.answers[path]
            return web.Response(status=status, body=payload, headers={"Content-Type": ctype})
        if request.method == "GET" and "/referrers/" in path and path.startswith("/v2/"):
            return self._referrers(request)
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        # The registry builds upload Locations from Host: keep ours so they point here.
        headers["Host"] = request.host
        assert self._session is not None
        async with self._session.request(
            request.method,
            self.upstream.url + request.path_qs,
            headers=headers,
            data=body if body else None,
            allow_redirects=False,
        ) as upstream:
            payload = await upstream.read()
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP}
            if request.method == "PUT" and "/manifests/" in path and upstream.status == 201:
                self._record(path, body)
        if request.method == "HEAD":
            # A HEAD's Content-Length is the manifest size syncd reads: pass it on as is.
            if "Content-Length" in upstream.headers:
                out["Content-Length"] = upstream.headers["Content-Length"]
            return web.Response(status=upstream.status, headers=out)
        return web.Response(status=upstream.status, headers=out, body=payload)

    def _record(self, path: str, body: bytes) -> None:
        repository = path[len("/v2/") : path.index("/manifests/")]
        doc = json.loads(body)
        subject = doc.get("subject")
        if not isinstance(subject, dict):
            return
        desc: dict[str, Any] = {
            "mediaType": doc.get("mediaType", ""),
            "digest": "sha256:" + hashlib.sha256(body).hexdigest(),
            "size": len(body),
            "artifactType": doc.get("artifactType") or doc.get("config", {}).get("mediaType", ""),
        }
        if doc.get("annotations"):
            desc["annotations"] = doc["annotations"]
        entries = self._index.setdefault((repository, subject["digest"]), [])
        if all(e["digest"] != desc["digest"] for e in entries):
            entries.append(desc)

    def _referrers(self, request: web.Request) -> web.Response:
        self.referrers_requests += 1
        if self.inject is not None:
            status, body, ctype = self.inject
            return web.Response(status=status, body=body, headers={"Content-Type": ctype})
        path = request.path
        repository = path[len("/v2/") : path.index("/referrers/")]
        subject = path.rsplit("/", 1)[1]
        entries = self.listed(repository, subject)
        headers: dict[str, str] = {}
        wanted = request.query.get("artifactType")
        if wanted and self.filters:
            entries = [e for e in entries if e["artifactType"] == wanted]
            headers["OCI-Filters-Applied"] = "artifactType"
        start = int(request.query.get("page", "0"))
        page = entries[start : start + self.page_size]
        if start + self.page_size < len(entries):
            query = {"page": str(start + self.page_size)}
            if wanted:
                query["artifactType"] = wanted
            headers["Link"] = f'<{path}?{urlencode(query)}>; rel="next"'
        doc = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": page,
        }
        return web.Response(
            status=200,
            body=json.dumps(doc).encode(),
            headers={**headers, "Content-Type": "application/vnd.oci.image.index.v1+json"},
        )
