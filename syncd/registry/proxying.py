"""Sends each request of a registry's session through the proxy its URL calls for.

A client middleware (aiohttp 3.12+) sees every hop, redirects included, so a blob
redirected to storage on another host gets that host's own ``NO_PROXY`` verdict. aiohttp's
``trust_env`` is not used: it does not understand CIDR ranges in ``NO_PROXY``, resolves
the environment in a thread on every request, and would also read ``~/.netrc``, which
could send credentials of that file to a registry.
"""

from __future__ import annotations

import base64

import aiohttp
from yarl import URL

from syncd.errors import AuthError
from syncd.proxy import EnvProxies, ProxyURL
from syncd.registry.neterrors import PROXY_REFUSED

# Hosts a session talks to: the registry, its token realm, blob storage it redirects to.
_MAX_ROUTES = 256


class ProxyRoute:
    """The proxy for each request of one registry: its own ``proxy``, else the
    environment's for the request's URL (with ``NO_PROXY``). Only a registry with a
    proxy gets the middleware (and pays for its per-hop routing)."""

    def __init__(self, fixed: ProxyURL | None, env: EnvProxies) -> None:
        self.fixed = fixed
        self.env = env
        self._routes: dict[tuple[str, str, int | None], ProxyURL | None] = {}

    def __bool__(self) -> bool:
        return self.fixed is not None or bool(self.env)

    def for_url(self, url: URL) -> ProxyURL | None:
        if self.fixed is not None:
            return self.fixed
        key = (url.scheme, url.host or "", url.port)
        if key in self._routes:
            return self._routes[key]
        if len(self._routes) >= _MAX_ROUTES:
            self._routes.clear()
        route = self._routes[key] = self.env.for_url(*key)
        return route

    def forwards_plain_http(self, base_url: str) -> bool:
        """True when plain-http requests to ``base_url`` are sent to a proxy. Many
        proxies (tinyproxy among them) close the client connection after each such answer
        without saying so (no ``Connection: close``); a connection reused for the next
        request then races that close and fails. Those requests get a connection each."""
        return base_url.startswith("http://") and self.for_url(URL(base_url)) is not None

    def refusal(self, url: str, registry: str) -> AuthError:
        """The error for a 407 to ``url``: the proxy wants (other) credentials."""
        proxy = self.for_url(URL(url))
        return AuthError(
            f"the proxy {proxy.url if proxy else ''} refused the request: {PROXY_REFUSED}",
            registry=registry,
            method="GET",
            url=url.split("?", 1)[0],
            status=407,
        )

    def describe(self, url: str) -> str:
        """Where requests to ``url`` go, for a log line (no credentials)."""
        proxy = self.for_url(URL(url))
        if proxy is None:
            return "directly"
        return f"through proxy {proxy.url} ({proxy.origin})" if proxy.origin else proxy.url

    async def middleware(
        self, req: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        proxy = self.for_url(req.url)
        if proxy is not None:
            headers = None
            if proxy.username is not None:
                secret = proxy.password.reveal() if proxy.password else ""
                raw = f"{proxy.username}:{secret}".encode()
                value = "Basic " + base64.b64encode(raw).decode()
                if req.is_ssl():
                    # Sent with the CONNECT only: inside the tunnel it would reach the
                    # registry.
                    headers = {"Proxy-Authorization": value}
                else:
                    # A plain-http request is sent to the proxy itself (RFC 9110 11.7.2).
                    req.headers["Proxy-Authorization"] = value
            req.update_proxy(URL(proxy.url), None, headers)
        return await handler(req)
