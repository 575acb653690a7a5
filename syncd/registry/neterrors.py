"""What never became an HTTP response, as syncd's typed errors: TLS, proxy, network.

The transport maps HTTP statuses itself; aiohttp's connection-level exceptions come here,
each turned into a message that names the host (and the proxy, by host and port only: its
URL may carry credentials).
"""

from __future__ import annotations

import ssl
from typing import Any

import aiohttp

from syncd.errors import AuthError, NetworkError, RegistryError, TLSError

# OpenSSL alert names a server sends when it wants a (valid) client certificate.
_CLIENT_CERT_ALERTS = ("BAD_CERTIFICATE", "CERTIFICATE_REQUIRED", "UNKNOWN_CA", "HANDSHAKE_FAILURE")
# A proxy's 407 (RFC 9110 section 15.5.8): a registry never answers it.
PROXY_REFUSED = "407 Proxy Authentication Required (check the user and password of the proxy URL)"


def _tls_alert(e: BaseException) -> str | None:
    """The OpenSSL reason (e.g. ``SSLV3_ALERT_BAD_CERTIFICATE``) behind a connection error."""
    seen: BaseException | None = e
    for _ in range(5):  # a short cause chain; bounded against cycles
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return str(seen.reason or seen)
        seen = seen.__cause__ or seen.__context__
    return None


def network_error(e: BaseException, host: str, where: dict[str, Any]) -> RegistryError:
    """``e`` (raised talking to ``host``) as a TLSError, AuthError or NetworkError;
    ``where`` carries the registry, repository, method and redacted URL."""
    if isinstance(e, aiohttp.ClientConnectorCertificateError):
        return TLSError(
            f"TLS certificate verification failed for {host}: {e.certificate_error}", **where
        )
    if isinstance(e, aiohttp.ClientSSLError):
        return TLSError(f"TLS handshake with {host} failed: {e}", **where)
    alert = _tls_alert(e)
    if alert is not None:
        # The server ended the handshake after seeing (or missing) our certificate;
        # with TLS 1.3 that surfaces on the first read, as a plain OSError.
        hint = ""
        if any(word in alert for word in _CLIENT_CERT_ALERTS):
            hint = (
                ": the registry refused the client certificate (or none was sent; "
                "set client_cert/client_key)"
            )
        return TLSError(f"TLS handshake with {host} failed: {alert}{hint}", **where)
    if isinstance(e, TimeoutError):
        return NetworkError(f"timed out talking to {host}", **where)
    if isinstance(e, aiohttp.ClientHttpProxyError):
        # The proxy refused the CONNECT of an https:// request.
        if e.status == 407:
            return AuthError(f"the proxy refused to connect to {host}: {PROXY_REFUSED}", **where)
        return NetworkError(f"the proxy refused to connect to {host}: {e.status}", **where)
    if isinstance(e, aiohttp.ClientProxyConnectionError):
        return NetworkError(
            f"cannot connect to proxy {e.host}:{e.port} (for {host}): "
            f"{e.os_error.strerror or e.os_error}",
            **where,
        )
    if isinstance(e, aiohttp.ClientConnectorError):
        return NetworkError(
            f"cannot connect to {host}: {e.os_error.strerror or e.os_error}", **where
        )
    return NetworkError(f"connection to {host} failed: {type(e).__name__}: {e}", **where)
