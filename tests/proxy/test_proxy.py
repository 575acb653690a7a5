"""Registries and token realms reached through a real forward proxy (tinyproxy).

The proxy's log lists every request it forwarded; the registries' access logs list every
request syncd made. Through the proxy, the two agree; bypassed, the proxy saw nothing.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from syncd.config.schema import Config
from syncd.metrics import Metrics
from syncd.proxy import parse_proxy_url
from tests.auth.test_redirect import BlobStorage, redirecting
from tests.copy.conftest import make_config, sync
from tests.helpers.auth import make_tls
from tests.helpers.forward_proxy import ForwardProxy, ForwardProxyFactory
from tests.helpers.images import image, push
from tests.helpers.registry import Registry, RegistryFactory, manifest_raw

UA = "syncd/"
REPO = "team/app"


def seeded(source: Registry) -> bytes:
    img = image("proxied", layers=2, size=3000)
    push(source.url, REPO, "v1", img)
    return img.raw


def through(proxy: ForwardProxy, reg: Registry) -> int:
    """How many requests for ``reg`` the proxy forwarded."""
    return len(proxy.requests(f"//{reg.host}/"))


def with_proxy(cfg: Config, name: str, url: str) -> Config:
    regs = dict(cfg.registries)
    regs[name] = replace(regs[name], proxy=parse_proxy_url(url, origin=f"registries.{name}"))
    return replace(cfg, registries=regs)


@pytest.mark.parametrize("target", ["zuul"], indirect=True)
async def test_http_proxy_from_the_environment_carries_registry_and_token_requests(
    source: Registry,
    target: Registry,
    forward_proxies: ForwardProxyFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raw = seeded(source)
    proxy = forward_proxies()
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    smark, tmark = source.log_mark(), target.log_mark()
    result = await sync(make_config(source, [target], [REPO], retries=1))
    assert result.ok and result.synced == 1
    assert manifest_raw(target.url, REPO, "v1") == raw
    # Every request syncd made reached the registries through the proxy, the token
    # requests to zuul-registry's realm among them.
    assert through(proxy, source) == len(source.accesses(smark, UA)) > 0
    assert through(proxy, target) == len(target.accesses(tmark, UA)) > 0
    assert proxy.requests("/auth/token")


async def test_no_proxy_bypasses_the_proxy(
    source: Registry,
    target: Registry,
    forward_proxies: ForwardProxyFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seeded(source)
    proxy = forward_proxies()
    monkeypatch.setenv("http_proxy", proxy.url)
    # (NO_PROXY, whether the source goes through the proxy, whether the target does)
    cases = [
        ("127.0.0.0/8", False, False),  # a CIDR range, which aiohttp's own matching ignores
        (f"localhost, 127.0.0.1:{target.port}", True, False),  # one host:port only
        ("127.0.0.1", False, False),
        ("*", False, False),
        ("registry.example.com,.example.org,10.0.0.0/8", True, True),
    ]
    for no_proxy, via_source, via_target in cases:
        monkeypatch.setenv("NO_PROXY", no_proxy)
        before = (through(proxy, source), through(proxy, target))
        result = await sync(make_config(source, [target], [REPO], retries=1))
        assert result.ok, (no_proxy, result.failures)
        after = (through(proxy, source), through(proxy, target))
        assert (after[0] > before[0], after[1] > before[1]) == (via_source, via_target), no_proxy


@pytest.mark.parametrize("target", ["zuul"], indirect=True)
async def test_a_registry_proxy_carries_that_registry_and_its_token_realm_only(
    source: Registry,
    target: Registry,
    forward_proxies: ForwardProxyFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raw = seeded(source)
    proxy, unused = forward_proxies(), forward_proxies()
    # The registry's own proxy wins over the environment, NO_PROXY included.
    monkeypatch.setenv("HTTP_PROXY", unused.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.0/8")
    cfg = with_proxy(make_config(source, [target], [REPO], retries=1), "t0", proxy.url)
    tmark = target.log_mark()
    result = await sync(cfg)
    assert result.ok and result.synced == 1
    assert manifest_raw(target.url, REPO, "v1") == raw
    assert through(proxy, target) == len(target.accesses(tmark, UA)) > 0
    assert proxy.requests("/auth/token")
    assert through(proxy, source) == 0 and unused.requests() == []


async def test_proxy_credentials_are_sent_and_never_shown(
    source: Registry,
    target: Registry,
    forward_proxies: ForwardProxyFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    raw = seeded(source)
    password = "pr0xy-s3cret-pw"
    proxy = forward_proxies(basic_auth=("proxyuser", password))
    caplog.set_level(logging.DEBUG)
    metrics = Metrics()

    def config(url: str) -> Config:
        return with_proxy(make_config(source, [target], [REPO], retries=1), "t0", url)

    # Without credentials the proxy answers 407: an error that says so, not a retry loop.
    anonymous = await sync(config(proxy.url), metrics)
    assert anonymous.failed == 1
    assert "407 Proxy Authentication Required" in " ".join(anonymous.failures)
    # A wrong password (tinyproxy answers it with a 401 of its own) fails the image.
    wrong = await sync(config(proxy.url_with("proxyuser", "not-the-pw")), metrics)
    assert wrong.failed == 1

    right = config(proxy.url_with("proxyuser", password))
    result = await sync(right, metrics)
    assert result.ok and result.synced == 1
    assert manifest_raw(target.url, REPO, "v1") == raw
    assert through(proxy, target) > 0

    shown = [
        caplog.text,
        " ".join(anonymous.failures + wrong.failures),
        repr(right),
        str(right),
        generate_latest(metrics.registry).decode(),
    ]
    for text in shown:
        assert password not in text and "not-the-pw" not in text


async def test_an_https_registry_is_tunnelled_with_connect_and_proxy_credentials(
    registries: RegistryFactory,
    forward_proxies: ForwardProxyFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tls = make_tls(tmp_path / "tls")
    source = registries(tls=tls.registry_tls)
    target = registries(tls=tls.registry_tls)
    img = image("tunnelled", layers=1, size=3000)
    push(source.url, REPO, "v1", img, context=tls.client_context())
    proxy = forward_proxies(basic_auth=("proxyuser", "tunnel-pw"))
    monkeypatch.setenv("HTTPS_PROXY", proxy.url_with("proxyuser", "tunnel-pw"))
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # never used: both are https
    cfg = make_config(source, [target], [REPO], retries=1)
    ca = str(tls.ca_file)
    cfg = replace(cfg, registries={n: replace(r, ca_file=ca) for n, r in cfg.registries.items()})
    result = await sync(cfg)
    assert result.ok and result.synced == 1, result.failures
    assert manifest_raw(target.url, REPO, "v1", context=tls.client_context()) == img.raw
    # The proxy saw tunnels to both registries, nothing in the clear.
    tunnels = {r.url for r in proxy.requests() if r.method == "CONNECT"}
    assert tunnels == {source.host, target.host}
    assert all(r.method == "CONNECT" for r in proxy.requests())


async def test_a_redirect_gets_its_own_no_proxy_verdict(
    registries: RegistryFactory,
    forward_proxies: ForwardProxyFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A blob redirected to storage on another host:port goes directly when NO_PROXY names
    that storage, while the registry itself is reached through the proxy."""
    storage = BlobStorage().start()
    try:
        source = registries(middleware=redirecting(storage.url))
        storage.root = source.root.resolve()
        target = registries()
        raw = seeded(source)
        proxy = forward_proxies()
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", storage.url.removeprefix("http://"))
        result = await sync(make_config(source, [target], [REPO], retries=1))
        assert result.ok and result.synced == 1, result.failures
        assert manifest_raw(target.url, REPO, "v1") == raw
        assert len(storage.seen) >= 3  # the config and two layers, fetched directly
        assert proxy.requests(storage.url.removeprefix("http://")) == []
        assert any("/blobs/" in r.url for r in proxy.requests(f"//{source.host}/"))
    finally:
        storage.stop()
