"""One ``RegistryClient`` per configured registry, for the life of the process."""

from __future__ import annotations

import ipaddress
import logging
import ssl
from collections.abc import Mapping
from types import TracebackType

from syncd import USER_AGENT
from syncd.config.schema import RegistryConfig
from syncd.metrics import Metrics
from syncd.registry.auth import Authenticator, CredentialsLike, StaticCredentials
from syncd.registry.client import RegistryClient
from syncd.registry.transport import Transport

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost (credentials may go there over http)."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _ssl_context(reg: RegistryConfig) -> ssl.SSLContext | bool | None:
    if reg.scheme != "https":
        return None
    if not reg.tls_verify:
        return False
    ctx = ssl.create_default_context()
    if reg.ca_file:
        ctx.load_verify_locations(cafile=reg.ca_file)
    if reg.client_cert:
        ctx.load_cert_chain(reg.client_cert, reg.client_key)
    return ctx


def _static(reg: RegistryConfig) -> CredentialsLike:
    return StaticCredentials(reg.username, reg.password)


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
        self._user_agent = user_agent
        self._clients: dict[str, RegistryClient] = {}

    def client(self, name: str) -> RegistryClient:
        """The shared client of registry ``name`` (created on first use)."""
        existing = self._clients.get(name)
        if existing is not None:
            return existing
        reg = self.configs[name]
        creds = _static(reg)

        async def credentials() -> CredentialsLike:
            return creds

        insecure = reg.scheme == "http" and not is_loopback(reg.host)
        allow = not insecure or reg.allow_insecure_auth
        if insecure and reg.username and not reg.allow_insecure_auth:
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
            credentials=credentials,
            allow_credentials=allow,
        )
        transport = Transport(
            name=name,
            base_url=reg.base_url,
            authenticator=auth,
            metrics=self._metrics,
            ssl=_ssl_context(reg),
            max_concurrency=reg.max_concurrency,
            retries=self._retries,
            user_agent=self._user_agent,
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
