"""The TLS settings of one registry, as an ``ssl`` argument for aiohttp.

* Default: the system's CAs (``ssl.create_default_context``: verification and hostname
  checks on, TLS 1.2 at least).
* ``ca_file``: a PEM bundle trusted *in addition to* the system CAs, for a private CA.
* ``client_cert`` (+ ``client_key`` unless the key is in the same PEM): presented to
  registries that require a client certificate (mutual TLS).
* ``tls_verify: false``: no verification at all. Only by explicit choice; the pool logs a
  warning when it builds such a registry's client.

Plain ``http://`` registries get no context: there is no TLS to configure.
"""

from __future__ import annotations

import ssl

from syncd.config.schema import RegistryConfig
from syncd.errors import ConfigError


def ssl_context(reg: RegistryConfig) -> ssl.SSLContext | bool:
    """The ``ssl=`` value for requests to ``reg``.

    ``True`` means aiohttp's own default (used for plain http, where it has no effect),
    ``False`` means no verification and no client certificate, and a context carries
    everything else. Unreadable or malformed files raise ``ConfigError`` naming the
    registry and the file, so the problem is reported before the first request.
    """
    if reg.scheme != "https":
        return True
    if not reg.tls_verify and not reg.client_cert:
        return False
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if not reg.tls_verify:
        # A client certificate still has to be presented; only the server check goes.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if reg.ca_file:
        try:
            ctx.load_verify_locations(cafile=reg.ca_file)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"registry {reg.name}: ca_file {reg.ca_file}: {_reason(e)}") from None
    if reg.client_cert:
        try:
            ctx.load_cert_chain(reg.client_cert, reg.client_key or None)
        except (OSError, ssl.SSLError) as e:
            files = reg.client_cert + (f" / {reg.client_key}" if reg.client_key else "")
            raise ConfigError(
                f"registry {reg.name}: client_cert/client_key {files}: {_reason(e)}"
            ) from None
    elif reg.client_key:
        raise ConfigError(f"registry {reg.name}: client_key is set without client_cert")
    return ctx


def _reason(e: OSError | ssl.SSLError) -> str:
    if isinstance(e, ssl.SSLError):
        return e.reason or str(e)
    return e.strerror or str(e)
