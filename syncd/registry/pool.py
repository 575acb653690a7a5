"""One ``RegistryClient`` per configured registry, for the life of the process."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING

from syncd import USER_AGENT
from syncd.config.schema import RegistryConfig
from syncd.registry.auth import Authenticator, is_loopback
from syncd.registry.client import RegistryClient
from syncd.registry.credentials import credential_source
from syncd.registry.tls import ssl_context
from syncd.registry.transport import Transport

if TYPE_CHECKING:
    from syncd.metrics import Metrics

log = logging.getLogger(__name__)


__all__ = ["ClientPool", "is_loopback"]


class ClientPool:
    """Builds the clients of a config's registries and closes their sessions together."""

    def __init__(
        self,
        registries: Mapping[str, RegistryConfig],
        *,
        metrics: Metrics | None = None,
        retries: int = 5,
        user_agent: str = USER_AGENT,
    ) -> None:
        self.configs = dict(registries)
        self._metrics = metrics
        self._retries = retries
        # Public: a cluster replica names itself in it, so registry logs tell replicas apart.
        self.user_agent = user_agent
        self._clients: dict[str, RegistryClient] = {}

    def client(self, name: str) -> RegistryClient:
        """The shared client of registry ``name`` (created on first use)."""
        existing = self._clients.get(name)
        if existing is not None:
            return existing
        reg = self.configs[name]
        # Built first: a bad ca_file or client certificate is a ConfigError before any I/O.
        tls = ssl_context(reg)
        source = credential_source(reg)
        insecure = reg.scheme == "http" and not is_loopback(reg.host)
        allow = not insecure or reg.allow_insecure_auth
        has_creds = bool(reg.password or reg.password_file or reg.docker_config)
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
        auth = Authenticator(
            registry=name,
            registry_host=reg.host,
            credentials=source.get,
            allow_credentials=allow,
            allow_insecure_auth=reg.allow_insecure_auth,
            on_refused=source.invalidate,
        )
        transport = Transport(
            name=name,
            base_url=reg.base_url,
            authenticator=auth,
            metrics=self._metrics,
            ssl=tls,
            max_concurrency=reg.max_concurrency,
            retries=self._retries,
            user_agent=self.user_agent,
            username=reg.username,
        )
        client = self._clients[name] = RegistryClient(transport)
        return client

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.transport.aclose()
        self._clients.clear()

    async def __aenter__(self) -> ClientPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
