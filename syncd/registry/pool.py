"""One client per configured registry, for the life of the process.

A registry whose url is an OCI image layout (``oci:PATH``, ``oci-archive:FILE``) gets a
``LayoutClient``, which answers the same methods from the file system.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, cast

from syncd import USER_AGENT
from syncd.config.schema import RegistryConfig
from syncd.errors import ConfigError, RateLimitedError
from syncd.layout import LayoutClient
from syncd.proxy import EnvProxies, env_proxies
from syncd.registry.auth import Authenticator, is_loopback
from syncd.registry.client import RegistryClient
from syncd.registry.credentials import account_sources
from syncd.registry.limits import RegistryLimits
from syncd.registry.proxying import ProxyRoute
from syncd.registry.tls import ssl_context
from syncd.registry.transport import Transport
from syncd.storage import ImageStore

if TYPE_CHECKING:
    from syncd.metrics import Metrics

log = logging.getLogger(__name__)


__all__ = ["AnyClient", "ClientPool", "is_loopback"]

# The kinds of place images live in: a registry, or an OCI image layout on disk.
AnyClient = RegistryClient | LayoutClient

if TYPE_CHECKING:
    # Both satisfy the seam the engine layers see (syncd.storage); mypy checks it here.
    _REGISTRY: ImageStore = cast(RegistryClient, None)
    _LAYOUT: ImageStore = cast(LayoutClient, None)


class ClientPool:
    """Builds the clients of a config's registries and closes their sessions together."""

    def __init__(
        self,
        registries: Mapping[str, RegistryConfig],
        *,
        metrics: Metrics | None = None,
        retries: int = 5,
        user_agent: str = USER_AGENT,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.configs = dict(registries)
        self._environ = os.environ if environ is None else environ
        self._env_proxies: EnvProxies | None = None
        self._metrics = metrics
        self._retries = retries
        # Public: a cluster replica names itself in it, so registry logs tell replicas apart.
        self.user_agent = user_agent
        self._clients: dict[str, AnyClient] = {}
        # The clients this pool closes: those it made, and those handed over to it.
        self._owned: set[str] = set()

    def client(self, name: str) -> ImageStore:
        """The shared client of registry ``name`` (created on first use): the rest of
        syncd sees only where images live (``syncd.storage``), not which kind of place."""
        existing = self._clients.get(name)
        if existing is not None:
            return existing
        reg = self.configs[name]
        if reg.layout is not None:
            layout = self._clients[name] = LayoutClient(
                name, reg.url, metrics=self._metrics, retries=self._retries
            )
            self._owned.add(name)
            return layout
        # Built first: a bad ca_file or client certificate is a ConfigError before any I/O.
        tls = ssl_context(reg)
        sources = account_sources(reg)
        insecure = reg.scheme == "http" and not is_loopback(reg.host)
        allow = not insecure or reg.allow_insecure_auth
        has_creds = bool(reg.password or reg.password_file or reg.docker_config or reg.credentials)
        if insecure and has_creds and not reg.allow_insecure_auth:
            log.warning(
                "registry %s is plain http on a non-loopback host: credentials will not be "
                "sent (set allow_insecure_auth: true to override)",
                name,
                extra={"registry": name},
            )
        if reg.scheme == "https" and not reg.tls_verify:
            log.warning(
                "registry %s: TLS verification is off (tls_verify: false)",
                name,
                extra={"registry": name},
            )
        auths = [
            Authenticator(
                registry=name,
                credentials=source.get,
                allow_credentials=allow,
                allow_insecure_auth=reg.allow_insecure_auth,
                on_refused=source.invalidate,
            )
            for source in sources
        ]
        reserve = reg.quota_reserve
        limits = RegistryLimits(
            registry=name,
            authenticators=auths,
            max_concurrency=reg.max_concurrency,
            max_retry_wait=reg.max_retry_wait,
            reserve=(reserve.amount, reserve.percent) if reserve else (10.0, True),
            requests_per_second=reg.requests_per_second,
            metrics=self._metrics,
            # An operator who sets a reserve or several accounts expects a budget.
            budgeted=reserve is not None or len(auths) > 1,
        )
        route = ProxyRoute(reg.proxy, self._proxies_from_env())
        if route:
            log.info(
                "registry %s: requests go %s",
                name,
                route.describe(reg.base_url),
                extra={"registry": name},
            )
        transport = Transport(
            name=name,
            base_url=reg.base_url,
            authenticator=auths[0],
            limits=limits,
            metrics=self._metrics,
            ssl=tls,
            max_concurrency=reg.max_concurrency,
            retries=self._retries,
            user_agent=self.user_agent,
            username=reg.username,
            proxy=route if route else None,
        )
        client = self._clients[name] = RegistryClient(transport)
        self._owned.add(name)
        return client

    def _proxies_from_env(self) -> EnvProxies:
        """HTTPS_PROXY / HTTP_PROXY / NO_PROXY, read once per pool (a bad value is a
        ConfigError naming the variable, before any request)."""
        if self._env_proxies is None:
            try:
                self._env_proxies = env_proxies(self._environ)
            except ValueError as e:
                raise ConfigError(str(e)) from None
            if self._env_proxies.no_proxy.ignored:
                log.warning(
                    "NO_PROXY: ignoring entries that are neither host names, addresses nor "
                    "CIDR ranges: %s",
                    ", ".join(self._env_proxies.no_proxy.ignored),
                )
        return self._env_proxies

    def rate_limited(self, name: str) -> RateLimitedError | None:
        """Why registry ``name`` must be left alone for now (a long Retry-After), if it must."""
        client = self._clients.get(name)
        if client is None or isinstance(client, LayoutClient):
            return None  # a layout on disk has no rate limits
        return client.transport.limits.blocked()

    def budgeted(self, name: str) -> bool:
        """Whether pulls from registry ``name`` are scarce (a pull budget applies)."""
        self.client(name)
        client = self._clients[name]
        return not isinstance(client, LayoutClient) and client.transport.limits.budgeted

    def adopt(self, previous: ClientPool) -> list[str]:
        """Take over ``previous``'s clients of registries whose config is unchanged: their
        sessions, cached tokens and learned challenges outlive a config reload. The
        previous pool keeps using them until it closes, and then leaves them open.
        Returns the names taken over."""
        taken = []
        for name, reg in self.configs.items():
            client = previous._clients.get(name)
            if client is None or previous.configs.get(name) != reg or name in self._clients:
                continue
            self._clients[name] = client
            if name in previous._owned:
                previous._owned.discard(name)
                self._owned.add(name)
            taken.append(name)
        return taken

    async def aclose(self) -> None:
        for name, client in self._clients.items():
            if name not in self._owned:
                continue
            if isinstance(client, LayoutClient):
                await client.aclose()
            else:
                await client.transport.aclose()
        self._clients.clear()
        self._owned.clear()

    async def __aenter__(self) -> ClientPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
