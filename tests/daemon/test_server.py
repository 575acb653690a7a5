"""The HTTP server on a real loopback socket, with plain callables behind it."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import aiohttp
import pytest

from syncd.metrics import Metrics
from syncd.secret import Secret
from syncd.server import HttpServer
from syncd.webhooks import RepoEvent

TOKEN = "s3cret-webhook-token"
DIGEST = "sha256:" + "c" * 64
ENVELOPE = json.dumps(
    {
        "events": [
            {
                "action": "push",
                "target": {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": DIGEST,
                    "repository": "team/app",
                    "tag": "v2",
                },
                "request": {"host": "127.0.0.1:5000"},
            }
        ]
    }
).encode()
HARBOR = json.dumps(
    {
        "type": "PUSH_ARTIFACT",
        "event_data": {
            "repository": {"repo_full_name": "library/app"},
            "resources": [{"tag": "v1", "digest": DIGEST}],
        },
    }
).encode()
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class State:
    ready: bool = False
    token: Secret | None = field(default_factory=lambda: Secret(TOKEN))
    received: list[list[RepoEvent]] = field(default_factory=list)
    explode: bool = False
    report: dict[str, object] = field(default_factory=lambda: {"version": 1, "rules": []})

    def trigger(self, events: Sequence[RepoEvent]) -> list[str]:
        if self.explode:
            raise RuntimeError("bug")
        self.received.append(list(events))
        return ["rule-a"] if events else []


@dataclass
class Running:
    state: State
    server: HttpServer
    base: str
    http: aiohttp.ClientSession


@pytest.fixture
async def srv() -> AsyncIterator[Running]:
    state = State()
    metrics = Metrics()
    server = HttpServer(
        metrics=metrics,
        ready=lambda: state.ready,
        trigger=state.trigger,
        webhook_token=lambda: state.token,
        status=lambda: state.report,
    )
    await server.start("127.0.0.1", 0)
    port = server.addresses[0][1]
    async with aiohttp.ClientSession() as http:
        yield Running(state, server, f"http://127.0.0.1:{port}", http)
    await server.aclose()


async def _status(r: Running, method: str, path: str, **kw: object) -> tuple[int, bytes]:
    async with r.http.request(method, r.base + path, **kw) as resp:  # type: ignore[arg-type]
        return resp.status, await resp.read()


async def test_health_and_readiness(srv: Running) -> None:
    assert await _status(srv, "GET", "/healthz") == (200, b"ok\n")
    assert (await _status(srv, "GET", "/readyz"))[0] == 503
    srv.state.ready = True
    assert (await _status(srv, "GET", "/readyz"))[0] == 200
    srv.server.stop_accepting()
    assert (await _status(srv, "GET", "/readyz"))[0] == 503
    assert (await _status(srv, "GET", "/healthz"))[0] == 200


async def test_metrics_exposition(srv: Running) -> None:
    async with srv.http.get(srv.base + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        text = await resp.text()
    assert 'syncd_config_reloads_total{result="success"} 0.0' in text


async def test_status_serves_the_current_report_without_credentials(srv: Running) -> None:
    async with srv.http.get(srv.base + "/status") as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        assert await resp.json() == {"version": 1, "rules": []}
    srv.state.report = {"version": 1, "rules": [{"name": "rule-a"}]}
    status, body = await _status(srv, "GET", "/status")
    assert (status, json.loads(body)) == (200, srv.state.report)


async def test_status_without_reports_is_404() -> None:
    server = HttpServer(
        metrics=Metrics(), ready=lambda: True, trigger=lambda e: [], webhook_token=lambda: None
    )
    await server.start("127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{server.addresses[0][1]}/status"
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            assert resp.status == 404
    finally:
        await server.aclose()


async def test_distribution_webhook_triggers(srv: Running) -> None:
    async with srv.http.post(
        srv.base + "/webhooks/distribution",
        data=ENVELOPE,
        headers={**AUTH, "Content-Type": "application/vnd.docker.distribution.events.v1+json"},
    ) as resp:
        assert resp.status == 202
        assert await resp.json() == {"events": 1, "rules": ["rule-a"]}
    assert srv.state.received == [[RepoEvent("team/app", "v2", DIGEST)]]


async def test_harbor_webhook_triggers(srv: Running) -> None:
    status, body = await _status(srv, "POST", "/webhooks/harbor", data=HARBOR, headers=AUTH)
    assert status == 202, body
    assert srv.state.received == [[RepoEvent("library/app", "v1", DIGEST)]]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no header"),
        pytest.param({"Authorization": "Bearer wrong"}, id="wrong token"),
        pytest.param({"Authorization": f"Bearer {TOKEN}x"}, id="token prefix"),
        pytest.param({"Authorization": f"Basic {TOKEN}"}, id="basic scheme"),
        pytest.param({"Authorization": "Bearer "}, id="empty token"),
    ],
)
@pytest.mark.parametrize("path", ["/webhooks/distribution", "/webhooks/harbor"])
async def test_webhooks_need_the_token(srv: Running, headers: dict[str, str], path: str) -> None:
    async with srv.http.post(srv.base + path, data=ENVELOPE, headers=headers) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert TOKEN not in await resp.text()
    assert srv.state.received == []


async def test_scheme_is_case_insensitive(srv: Running) -> None:
    headers = {"Authorization": f"bearer {TOKEN}"}
    assert (await _status(srv, "POST", "/webhooks/distribution", data=ENVELOPE, headers=headers))[
        0
    ] == 202


async def test_without_a_configured_token_webhooks_are_refused(srv: Running) -> None:
    srv.state.token = None
    status, body = await _status(srv, "POST", "/webhooks/distribution", data=ENVELOPE, headers=AUTH)
    assert status == 401
    assert b"webhook_token" in body
    assert srv.state.received == []


async def test_malformed_body_is_400_and_logged(
    srv: Running, caplog: pytest.LogCaptureFixture
) -> None:
    for body in (b"not json", b'{"events": 3}', b'{"type": 1}'):
        for path in ("/webhooks/distribution", "/webhooks/harbor"):
            status, _ = await _status(srv, "POST", path, data=body, headers=AUTH)
            assert status == 400
    assert sum(r.getMessage().startswith("webhook malformed") for r in caplog.records) == 6
    assert (await _status(srv, "GET", "/healthz"))[0] == 200
    assert srv.state.received == []


async def test_oversized_body_is_413(srv: Running) -> None:
    big = b'{"events": []' + b" " * (1024 * 1024) + b"}"
    status, _ = await _status(
        srv, "POST", "/webhooks/distribution", data=io.BytesIO(big), headers=AUTH
    )
    assert status == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the cap applies on read
        for _ in range(17):
            yield b" " * 65536

    status, _ = await _status(srv, "POST", "/webhooks/distribution", data=chunks(), headers=AUTH)
    assert status == 413
    assert srv.state.received == []


async def test_a_trigger_bug_is_a_500_not_a_crash(srv: Running) -> None:
    srv.state.explode = True
    status, _ = await _status(srv, "POST", "/webhooks/distribution", data=ENVELOPE, headers=AUTH)
    assert status == 500
    srv.state.explode = False
    status, _ = await _status(srv, "POST", "/webhooks/distribution", data=ENVELOPE, headers=AUTH)
    assert status == 202


async def test_stopping_refuses_webhooks(srv: Running) -> None:
    srv.server.stop_accepting()
    status, _ = await _status(srv, "POST", "/webhooks/distribution", data=ENVELOPE, headers=AUTH)
    assert status == 503
    assert srv.state.received == []


async def test_pull_only_envelope_is_accepted_and_triggers_nothing(srv: Running) -> None:
    body = json.dumps({"events": [{"action": "pull", "target": {"repository": "a"}}]}).encode()
    status, payload = await _status(srv, "POST", "/webhooks/distribution", data=body, headers=AUTH)
    assert status == 202
    assert json.loads(payload) == {"events": 0, "rules": []}
