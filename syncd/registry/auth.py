"""Registry authentication: challenge parsing, Basic, and the Docker Bearer token flow.

The handshake (distribution spec, "Token Authentication Specification"):
  1. ``GET /v2/`` answers 200: anonymous access, no header needed.
  2. 401 with ``WWW-Authenticate: Basic realm=…``: send the credentials on every request.
  3. 401 with ``WWW-Authenticate: Bearer realm=…,service=…[,scope=…]``: ask the realm for a
     token covering the scopes of the request, then send ``Authorization: Bearer <token>``.
Tokens are cached per scope set and dropped when they expire or the registry refuses them.
This module never retries; the transport decides that.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp

from syncd.errors import AuthError, NetworkError, ServerError
from syncd.secret import Secret

_MAX_TOKEN_BODY = 64 * 1024
# Tokens without expires_in live 60 s per the token spec; refresh a little early so a
# token does not expire between the check and the request.
_DEFAULT_TOKEN_LIFETIME = 60.0
_EXPIRY_MARGIN = 10.0
_PARAM_RE = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


@dataclass(frozen=True, slots=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` challenge."""

    scheme: str  # "basic" or "bearer", lower-case
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")

    @property
    def service(self) -> str:
        return self.params.get("service", "")

    @property
    def scopes(self) -> tuple[str, ...]:
        return tuple(s for s in self.params.get("scope", "").split(" ") if s)


def parse_challenge(header: str) -> Challenge | None:
    """Parse one ``WWW-Authenticate`` value; None if it is empty or not Basic/Bearer."""
    scheme, _, rest = header.strip().partition(" ")
    scheme = scheme.lower()
    if scheme not in ("basic", "bearer"):
        return None
    params = {}
    for m in _PARAM_RE.finditer(rest):
        value = m.group(2) if m.group(2) is not None else m.group(3)
        params[m.group(1).lower()] = value.replace('\\"', '"')
    return Challenge(scheme, params)


def repository_scope(repository: str, actions: str) -> str:
    return f"repository:{repository}:{actions}"


class CredentialsLike(Protocol):
    """What the authenticator needs from a credential source's answer."""

    @property
    def username(self) -> str | None: ...
    @property
    def password(self) -> Secret | None: ...
    @property
    def identity_token(self) -> Secret | None: ...


@dataclass(frozen=True, slots=True)
class StaticCredentials:
    """Username and password given inline in the config (or none at all)."""

    username: str | None = None
    password: Secret | None = None
    identity_token: Secret | None = None


CredentialsGetter = Callable[[], Awaitable[CredentialsLike]]


async def _no_credentials() -> CredentialsLike:
    return StaticCredentials()


@dataclass(slots=True)
class _Token:
    value: Secret
    expires_at: float


class Authenticator:
    """Produces the Authorization header for a registry, following its challenge.

    One per registry and process: the token cache is shared by every request to it.
    """

    def __init__(
        self,
        *,
        registry: str,
        registry_host: str,
        credentials: CredentialsGetter = _no_credentials,
        allow_credentials: bool = True,
    ) -> None:
        self.registry = registry
        self._host = registry_host
        self._credentials = credentials
        # False for a plain-http registry that is neither loopback nor explicitly allowed.
        self._allow_credentials = allow_credentials
        self.challenge: Challenge | None = None
        self._tokens: dict[tuple[str, ...], _Token] = {}
        self.token_requests = 0

    def learn(self, header: str | None) -> bool:
        """Take a challenge from a 401. True if it brings something new to try."""
        if not header:
            return False
        challenge = parse_challenge(header)
        if challenge is None:
            return False
        new = challenge != self.challenge
        self.challenge = challenge
        return new or challenge.scheme == "bearer"

    def forget(self, scopes: Sequence[str]) -> None:
        """Drop a cached token the registry refused, so the next header fetches anew."""
        self._tokens.pop(tuple(sorted(set(scopes))), None)

    def cached(self, scopes: Sequence[str]) -> bool:
        return tuple(sorted(set(scopes))) in self._tokens

    async def header(
        self, session: aiohttp.ClientSession, scopes: Sequence[str], *, ssl: Any = True
    ) -> dict[str, str]:
        """The Authorization header for a request needing ``scopes``; {} when anonymous."""
        if self.challenge is None:
            return {}
        if self.challenge.scheme == "basic":
            creds = await self._credentials()
            if creds.username and creds.password and self._allow_credentials:
                raw = f"{creds.username}:{creds.password.reveal()}".encode()
                return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
            return {}
        token = await self._token(session, scopes, ssl=ssl)
        return {"Authorization": f"Bearer {token.reveal()}"} if token else {}

    async def _token(
        self, session: aiohttp.ClientSession, scopes: Sequence[str], *, ssl: Any
    ) -> Secret | None:
        assert self.challenge is not None
        # Scopes from the challenge go first: some registries only read the first one.
        wanted = list(dict.fromkeys([*self.challenge.scopes, *scopes]))
        key = tuple(sorted(set(wanted)))
        cached = self._tokens.get(key)
        if cached and cached.expires_at - _EXPIRY_MARGIN > time.monotonic():
            return cached.value
        realm = self.challenge.realm
        if not realm or urlsplit(realm).scheme not in ("http", "https"):
            raise AuthError(f"token realm {realm!r} is not an http(s) URL", registry=self.registry)
        query: list[tuple[str, str]] = []
        if self.challenge.service:
            query.append(("service", self.challenge.service))
        query.extend(("scope", s) for s in wanted)
        creds = await self._credentials()
        headers = {}
        if creds.username and creds.password and self._allow_credentials:
            raw = f"{creds.username}:{creds.password.reveal()}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        self.token_requests += 1
        try:
            async with session.get(
                realm, params=query, headers=headers, ssl=ssl, allow_redirects=False
            ) as resp:
                body = await resp.content.read(_MAX_TOKEN_BODY)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as e:
            raise NetworkError(
                f"token endpoint unreachable: {type(e).__name__}: {e}",
                registry=self.registry,
                url=realm.split("?")[0],
            ) from None
        user = f" (user {creds.username})" if creds.username else ""
        if status in (401, 403):
            raise AuthError(
                f"authentication failed for {self.registry}{user}: token endpoint answered "
                f"{status}",
                registry=self.registry,
                status=status,
            )
        if status >= 500:
            raise ServerError(
                f"token endpoint answered {status}", registry=self.registry, status=status
            )
        if status != 200:
            raise AuthError(
                f"token endpoint answered {status}", registry=self.registry, status=status
            )
        try:
            doc = json.loads(body)
            value = doc.get("token") or doc.get("access_token")
            lifetime = float(doc.get("expires_in") or _DEFAULT_TOKEN_LIFETIME)
        except (ValueError, AttributeError, TypeError):
            value, lifetime = None, 0.0
        if not isinstance(value, str) or not value:
            raise AuthError("token endpoint answered without a token", registry=self.registry)
        token = _Token(Secret(value), time.monotonic() + lifetime)
        self._tokens[key] = token
        return token.value
