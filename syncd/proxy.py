"""Forward proxies: a registry's ``proxy`` URL, and HTTPS_PROXY/HTTP_PROXY/NO_PROXY.

Pure values and matching; the transport applies them to each request. The environment is
read the way curl and Python's ``urllib`` read it: the lower-case variable wins over the
upper-case one, an empty value is unset, and ``NO_PROXY`` names hosts that are reached
directly. ``NO_PROXY`` takes what curl takes (``*``, host names with or without a leading
dot, which also cover their subdomains, IP addresses, an optional ``:port``) and, unlike
aiohttp's and urllib's matching, CIDR ranges such as ``10.0.0.0/8``. Host names are
never resolved to match a range, as in curl and Go.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from syncd.secret import Secret

_HOST_RE = re.compile(
    r"^(?:[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?)*"
    r"|\[[0-9a-f:.]+\])$"
)
_DEFAULT_PORTS = {"http": 80, "https": 443}
ProxyAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
ProxyNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ProxyURL:
    """A forward proxy: ``url`` carries no credentials; they are kept apart, masked."""

    url: str  # http://host:port
    username: str | None = None
    password: Secret | None = None
    origin: str = ""  # where it was set, for messages: "registries.hub.proxy", "HTTPS_PROXY"

    def __str__(self) -> str:
        return self.url


def parse_proxy_url(value: str, *, origin: str = "", default_scheme: bool = False) -> ProxyURL:
    """``http://[user[:password]@]host[:port][/]`` as a ``ProxyURL``.

    Raises ``ValueError`` with a message that never repeats the credentials. With
    ``default_scheme`` a bare ``host:port`` (common in ``HTTPS_PROXY``) means http.
    """
    expected = "write http://[USER:PASSWORD@]HOST:PORT"
    text = value.strip()
    if default_scheme and "://" not in text:
        text = "http://" + text
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise ValueError(f"proxy URL has no scheme: {expected}")
    if scheme.lower() != "http":
        # https:// proxies (TLS to the proxy itself) and socks are not supported; an
        # https registry is still reached through an http proxy, tunnelled by CONNECT.
        raise ValueError(f"proxy scheme must be http, not {scheme!r}: {expected}")
    authority, _, tail = rest.partition("/")
    if tail or any(c in authority for c in "?#"):
        raise ValueError(f"proxy URL must not have a path or query: {expected}")
    userinfo, at, hostport = authority.rpartition("@")
    try:
        parts = urlsplit(f"http://{hostport}")
        port = parts.port
        host = parts.hostname or ""
    except ValueError:
        raise ValueError(f"proxy URL has an invalid port: {expected}") from None
    shown = f"[{host}]" if ":" in host else host
    if not host or not _HOST_RE.match(shown.lower()):
        raise ValueError(f"proxy URL has no valid host: {expected}")
    username: str | None = None
    password: Secret | None = None
    if at:
        user, colon, pw = userinfo.partition(":")
        if not user:
            raise ValueError(f"proxy URL has credentials without a user name: {expected}")
        username = unquote(user)
        password = Secret(unquote(pw)) if colon else None
    url = f"http://{shown.lower()}:{port or 80}"
    return ProxyURL(url, username, password, origin)


@dataclass(frozen=True, slots=True)
class _NoProxyEntry:
    domain: str = ""  # a host name, matched with its subdomains
    address: ProxyAddress | None = None
    network: ProxyNetwork | None = None
    port: int | None = None


@dataclass(frozen=True, slots=True)
class NoProxy:
    """The parsed ``NO_PROXY`` list; ``ignored`` lists entries that are not understood."""

    entries: tuple[_NoProxyEntry, ...] = ()
    everything: bool = False
    ignored: tuple[str, ...] = ()

    def matches(self, host: str, port: int) -> bool:
        """True when ``host:port`` must be reached directly."""
        if self.everything:
            return True
        name = host.lower().strip("[]").rstrip(".")
        try:
            address: ProxyAddress | None = ipaddress.ip_address(name)
        except ValueError:
            address = None
        for e in self.entries:
            if e.port is not None and e.port != port:
                continue
            if e.network is not None:
                if address is not None and _within(address, e.network):
                    return True
            elif e.address is not None:
                if address == e.address:
                    return True
            elif name == e.domain or name.endswith("." + e.domain):
                return True
        return False


def _within(address: ProxyAddress, network: ProxyNetwork) -> bool:
    return address.version == network.version and address in network


def parse_no_proxy(value: str) -> NoProxy:
    """A comma- (or space-) separated ``NO_PROXY`` value."""
    entries: list[_NoProxyEntry] = []
    ignored: list[str] = []
    for raw in re.split(r"[,\s]+", value.strip()):
        item = raw.lower()
        if not item:
            continue
        if item == "*":
            return NoProxy(everything=True)
        entry = _no_proxy_entry(item)
        if entry is None:
            ignored.append(raw)
        else:
            entries.append(entry)
    return NoProxy(tuple(entries), ignored=tuple(ignored))


def _no_proxy_entry(item: str) -> _NoProxyEntry | None:
    if "/" in item:
        try:
            return _NoProxyEntry(network=ipaddress.ip_network(item.strip("[]"), strict=False))
        except ValueError:
            return None
    port: int | None = None
    host = item
    if item.startswith("["):  # [v6] or [v6]:port
        host, _, rest = item[1:].partition("]")
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
        elif rest:
            return None
    elif item.count(":") == 1:  # name:port or v4:port
        host, _, p = item.partition(":")
        if not p.isdigit():
            return None
        port = int(p)
    try:
        return _NoProxyEntry(address=ipaddress.ip_address(host), port=port)
    except ValueError:
        pass
    domain = host.removeprefix("*.").lstrip(".").rstrip(".")
    if not domain or not _HOST_RE.match(domain):
        return None
    return _NoProxyEntry(domain=domain, port=port)


@dataclass(frozen=True, slots=True)
class EnvProxies:
    """HTTPS_PROXY, HTTP_PROXY and NO_PROXY, read once."""

    https: ProxyURL | None = None
    http: ProxyURL | None = None
    no_proxy: NoProxy = NoProxy()

    def __bool__(self) -> bool:
        return self.https is not None or self.http is not None

    def for_url(self, scheme: str, host: str, port: int | None) -> ProxyURL | None:
        """The proxy for a request to ``scheme://host:port``; None to go directly."""
        proxy = self.https if scheme == "https" else self.http if scheme == "http" else None
        if proxy is None:
            return None
        if self.no_proxy.matches(host, port or _DEFAULT_PORTS.get(scheme, 0)):
            return None
        return proxy


def _env(environ: Mapping[str, str], name: str) -> tuple[str, str] | None:
    for key in (name.lower(), name.upper()):
        value = environ.get(key, "").strip()
        if value:
            return key, value
    return None


def env_proxies(environ: Mapping[str, str]) -> EnvProxies:
    """The proxies the environment names; ``ValueError`` names the bad variable."""
    found: dict[str, ProxyURL | None] = {}
    for scheme in ("https", "http"):
        hit = _env(environ, f"{scheme}_proxy")
        if hit is None:
            found[scheme] = None
            continue
        key, value = hit
        try:
            found[scheme] = parse_proxy_url(value, origin=key, default_scheme=True)
        except ValueError as e:
            raise ValueError(f"environment variable {key}: {e}") from None
    no_proxy = _env(environ, "no_proxy")
    return EnvProxies(
        https=found["https"],
        http=found["http"],
        no_proxy=parse_no_proxy(no_proxy[1]) if no_proxy else NoProxy(),
    )
