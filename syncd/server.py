"""The HTTP side of ``syncd run``: metrics, health, readiness and push webhooks.

The server is handed callables and knows nothing else: ``ready()`` for ``/readyz``,
``trigger(events)`` (which returns the names of the rules it queued) for the webhooks,
``webhook_token()`` so a reload can change the token without a restart, and ``status()``
for ``/status`` (the run report of the latest pass of every rule, docs/reports.md). It does
not import the sync, copy or registry layers, and it knows nothing about reload.

Webhook requests are checked in order of cost: refused while stopping (503), then the
bearer token (401; with no ``server.webhook_token`` configured every webhook is refused), then
the declared and actual body size (413), then the body itself (400). Only then is anything
triggered (202).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from aiohttp import web

from syncd.errors import WebhookPayloadError
from syncd.metrics import Metrics
from syncd.secret import Secret
from syncd.webhooks import (
    MAX_BODY_BYTES,
    RepoEvent,
    parse_distribution_events,
    parse_harbor_event,
)

logger = logging.getLogger(__name__)

Trigger = Callable[[Sequence[RepoEvent]], Iterable[str]]
Status = Callable[[], Mapping[str, Any]]
# Requests still open when the server closes get this long to finish; the daemon's own
# shutdown bound applies to passes, not to scrapes.
_CLOSE_GRACE_SECONDS = 2.0


class HttpServer:
    """``/metrics``, ``/healthz``, ``/readyz``, ``/status`` and ``/webhooks/{distribution,harbor}``.

    ``/status`` is read-only and, like ``/metrics``, needs no credentials: it says what the
    passes did (names, digests, counts, error messages, which carry no secrets), never how
    to reach a registry; expose the server as deliberately as the metrics.
    """

    def __init__(
        self,
        *,
        metrics: Metrics,
        ready: Callable[[], bool],
        trigger: Trigger,
        webhook_token: Callable[[], Secret | None],
        status: Status | None = None,
        max_body: int = MAX_BODY_BYTES,
        cluster_status: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._status = status
        self._metrics = metrics
        self._ready = ready
        self._trigger = trigger
        self._token = webhook_token
        self._max_body = max_body
        self._cluster_status = cluster_status
        self._stopping = False
        self._runner: web.AppRunner | None = None
        app = web.Application(client_max_size=max_body)
        app.router.add_get("/metrics", self._get_metrics)
        app.router.add_get("/healthz", self._get_healthz)
        app.router.add_get("/readyz", self._get_readyz)
        app.router.add_get("/status", self._get_status)
        app.router.add_post("/webhooks/distribution", self._post_distribution)
        app.router.add_post("/webhooks/harbor", self._post_harbor)
        self.app = app

    async def start(self, host: str | None, port: int) -> None:
        """Listen on ``host:port`` (``None``: every interface); raises ``OSError`` if taken."""
        # Scrapes and probes every few seconds would drown the audit log: no access log.
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=_CLOSE_GRACE_SECONDS)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, reuse_address=True).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner

    @property
    def addresses(self) -> list[Any]:
        """The bound socket addresses (useful with port 0)."""
        return list(self._runner.addresses) if self._runner else []

    def stop_accepting(self) -> None:
        """From now on ``/readyz`` and the webhooks answer 503; metrics and health stay."""
        self._stopping = True

    async def aclose(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # -- handlers -----------------------------------------------------------------------
    async def _get_metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self._metrics.exposition(),
            headers={"Content-Type": self._metrics.content_type},
        )

    async def _get_healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _get_readyz(self, request: web.Request) -> web.Response:
        if self._stopping:
            return web.Response(status=503, text="stopping\n")
        if not self._ready():
            return web.Response(status=503, text="not ready\n")
        return web.Response(text="ready\n")

    async def _get_status(self, request: web.Request) -> web.Response:
        if self._status is None and self._cluster_status is None:
            return _error(404, "no run reports in this process")
        doc: dict[str, Any] = dict(self._status()) if self._status is not None else {}
        if self._cluster_status is not None:
            # In a cluster: the members and the units this replica owns.
            doc["cluster"] = self._cluster_status()
        return web.json_response(doc, dumps=_dumps)

    async def _post_distribution(self, request: web.Request) -> web.Response:
        return await self._webhook(request, "distribution", parse_distribution_events)

    async def _post_harbor(self, request: web.Request) -> web.Response:
        return await self._webhook(request, "harbor", parse_harbor_event)

    async def _webhook(
        self,
        request: web.Request,
        sender: str,
        parse: Callable[[bytes], list[RepoEvent]],
    ) -> web.Response:
        fields: dict[str, object] = {"webhook": sender, "remote": request.remote or ""}
        if self._stopping:
            return _error(503, "shutting down")
        refusal = self._refusal(request.headers.get("Authorization"))
        if refusal:
            logger.warning("webhook refused: %s", refusal, extra={**fields, "result": "refused"})
            return _error(401, refusal, headers={"WWW-Authenticate": 'Bearer realm="syncd"'})
        if request.content_length is not None and request.content_length > self._max_body:
            return self._too_large(fields)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:  # chunked bodies have no Content-Length
            return self._too_large(fields)
        try:
            events = parse(body)
        except WebhookPayloadError as e:
            logger.warning("webhook malformed: %s", e, extra={**fields, "result": "malformed"})
            return _error(400, str(e))
        try:
            rules = sorted(self._trigger(events))
        except Exception:
            logger.exception("webhook trigger failed", extra={**fields, "result": "error"})
            return _error(500, "internal error")
        repositories = sorted({e.repository for e in events})
        logger.info(
            "webhook accepted",
            extra={**fields, "result": "accepted", "repositories": repositories, "rules": rules},
        )
        return web.json_response({"events": len(events), "rules": rules}, status=202)

    def _refusal(self, header: str | None) -> str:
        """Why the request is not authorized, or ``""`` if it is."""
        token = self._token()
        if not token:
            return "webhooks are disabled: no server.webhook_token is configured"
        scheme, _, credentials = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return "missing bearer token"
        # Constant time, so the response time says nothing about how much of the token matched.
        if not hmac.compare_digest(credentials.strip().encode(), token.reveal().encode()):
            return "wrong bearer token"
        return ""

    def _too_large(self, fields: dict[str, object]) -> web.Response:
        logger.warning("webhook body too large", extra={**fields, "result": "too_large"})
        return _error(413, f"body larger than {self._max_body} bytes")


def _dumps(doc: Any) -> str:
    return json.dumps(doc, indent=2) + "\n"


def _error(status: int, message: str, *, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)
