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

import asyncio
import base64
import ipaddress
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol
from urllib.parse import urlsplit

import aiohttp

from syncd.errors import AuthError, NetworkError, ServerError, TLSError
from syncd.registry.bodies import read_capped
from syncd.secret import Secret

log = logging.getLogger(__name__)

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


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost (credentials may go there over http)."""
    if host.startswith("["):  # [v6]:port
        name = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:  # name:port or v4:port
        name = host.rsplit(":", 1)[0]
    else:  # a name, or a bare v6 address
        name = host
    name = name.lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def may_send_credentials(url: str, *, allow_insecure: bool = False) -> bool:
    """Credentials go over https, to loopback, or where the operator explicitly allowed it."""
    parts = urlsplit(url)
    return parts.scheme == "https" or is_loopback(parts.netloc) or allow_insecure


def _error_text(body: bytes) -> str:
    """The server's own words from a token-endpoint error body, cut short.

    Token servers answer in three dialects: distribution's ``errors`` array, OAuth2's
    ``error``/``error_description`` (RFC 6749 section 5.2), and Docker Hub's ``details``.
    """
    try:
        doc = json.loads(body[:_MAX_TOKEN_BODY])
    except ValueError:
        doc = None
    parts: list[str] = []
    if isinstance(doc, dict):
        errors = doc.get("errors")
        if isinstance(errors, list):
            for e in errors[:3]:
                if isinstance(e, dict):
                    code, msg = str(e.get("code", "")), str(e.get("message", ""))
                    parts.append(f"{code}: {msg}" if code and msg else code or msg)
        for key in ("error", "error_description", "details", "message"):
            value = doc.get(key)
            if isinstance(value, str) and value:
                parts.append(value)
    elif body:
        # Not JSON: an HTML page or plain text; the first line is usually the gist.
        lines = body[:200].decode("utf-8", "replace").strip().splitlines()
        parts.append(lines[0] if lines else "")
    return "; ".join(p for p in parts if p)[:300]


@dataclass(slots=True)
class _Token:
    value: Secret
    expires_at: float


@dataclass(frozen=True, slots=True)
class _TokenAnswer:
    token: Secret
    lifetime: float
    refresh_token: Secret | None


class Authenticator:
    """Produces the Authorization header for a registry, following its challenge.

    One per registry and process: the token cache is shared by every request to it.

    Token requests, in order of preference (Docker's and containerd's behaviour):

    * an identity token (Docker's ``identitytoken``, a helper's ``<token>`` answer) is an
      OAuth2 refresh token: ``POST realm`` with ``grant_type=refresh_token``;
    * a username and password: ``POST realm`` with ``grant_type=password`` and
      ``access_type=offline``, so that later tokens come from the refresh token it returns
      and the password is sent once. A token server without OAuth2 answers 404/405 (some
      answer 400/401); then ``GET realm`` with Basic auth is used from then on;
    * nothing: an anonymous ``GET realm``, which public repositories accept.
    """

    def __init__(
        self,
        *,
        registry: str,
        credentials: CredentialsGetter = _no_credentials,
        allow_credentials: bool = True,
        allow_insecure_auth: bool = False,
        on_refused: Callable[[], None] | None = None,
        client_id: str = "syncd",
    ) -> None:
        self.registry = registry
        self._credentials = credentials
        # False for a plain-http registry that is neither loopback nor explicitly allowed.
        self._allow_credentials = allow_credentials
        # The same rule for a token realm on another host: no passwords over plain http.
        self._allow_insecure = allow_insecure_auth
        self._on_refused = on_refused
        self._client_id = client_id
        self.challenge: Challenge | None = None
        self._tokens: dict[tuple[str, ...], _Token] = {}
        # One fetch per scope set at a time: concurrent requests share its answer.
        self._locks: dict[tuple[str, ...], asyncio.Lock] = {}
        # The refresh token from a password grant, valid for the credentials it came from.
        self._refresh: tuple[tuple[str | None, Secret | None], Secret] | None = None
        self._post_unsupported = False
        #: The username of the credentials last used, for "authentication failed" messages.
        self.username: str | None = None

    def learn(self, header: str | None) -> bool:
        """Take a challenge from a 401. True if it brings something new to try."""
        if not header:
            return False
        challenge = parse_challenge(header)
        if challenge is None:
            return False
        # The scope and error of a challenge describe one request, not the registry; kept,
        # they would leak one repository's scope into every later token request.
        params = {k: v for k, v in challenge.params.items() if k not in ("scope", "error")}
        challenge = Challenge(challenge.scheme, params)
        if self.challenge is not None and self._on_refused is not None:
            # Credentials were refused after the first handshake: a helper may know better.
            self._on_refused()
        new = challenge != self.challenge
        self.challenge = challenge
        return new or challenge.scheme == "bearer"

    def forget(self, scopes: Sequence[str]) -> None:
        """Drop a cached token the registry refused, so the next header fetches anew."""
        self._tokens.pop(_key(scopes), None)

    def cached(self, scopes: Sequence[str]) -> bool:
        return _key(scopes) in self._tokens

    async def header(
        self, session: aiohttp.ClientSession, scopes: Sequence[str], *, ssl: Any = True
    ) -> dict[str, str]:
        """The Authorization header for a request needing ``scopes``; {} when anonymous."""
        if self.challenge is None:
            return {}
        if self.challenge.scheme == "basic":
            creds = await self._credentials()
            self.username = creds.username
            if creds.username and creds.password and self._allow_credentials:
                raw = f"{creds.username}:{creds.password.reveal()}".encode()
                return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
            return {}
        token = await self._token(session, scopes, ssl=ssl)
        return {"Authorization": f"Bearer {token.reveal()}"}

    async def _token(
        self, session: aiohttp.ClientSession, scopes: Sequence[str], *, ssl: Any
    ) -> Secret:
        key = _key(scopes)
        cached = self._tokens.get(key)
        if cached and cached.expires_at > time.monotonic():
            return cached.value
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._tokens.get(key)
            if cached and cached.expires_at > time.monotonic():
                return cached.value
            answer = await self._fetch(session, list(dict.fromkeys(scopes)), ssl=ssl)
            # Refresh a little early so a token does not expire between check and use;
            # a fifth of the lifetime for short-lived tokens.
            margin = min(_EXPIRY_MARGIN, answer.lifetime / 5)
            token = _Token(answer.token, time.monotonic() + answer.lifetime - margin)
            self._tokens[key] = token
            return token.value

    async def _fetch(
        self, session: aiohttp.ClientSession, scopes: list[str], *, ssl: Any
    ) -> _TokenAnswer:
        assert self.challenge is not None
        realm = self.challenge.realm
        if not realm or urlsplit(realm).scheme not in ("http", "https"):
            raise AuthError(f"token realm {realm!r} is not an http(s) URL", registry=self.registry)
        creds = await self._credentials()
        self.username = creds.username
        send = self._allow_credentials and may_send_credentials(
            realm, allow_insecure=self._allow_insecure
        )
        if not send and (creds.password or creds.identity_token):
            log.warning(
                "registry %s: not sending credentials to token endpoint %s over plain http "
                "(set allow_insecure_auth: true to allow)",
                self.registry,
                _redact(realm),
                extra={"registry": self.registry},
            )
        if send and creds.identity_token:
            answer = await self._oauth(
                session, realm, scopes, creds, ssl, refresh=creds.identity_token
            )
            if answer is None:
                raise AuthError(
                    f"authentication failed for {self.registry}: the token endpoint "
                    f"{_redact(realm)} does not support OAuth2 POST, which an identity "
                    "token needs (use a username and password instead)",
                    registry=self.registry,
                )
            return answer
        if send and creds.username and creds.password:
            identity = (creds.username, creds.password)
            if self._refresh is not None and self._refresh[0] == identity:
                answer = await self._oauth(
                    session, realm, scopes, creds, ssl, refresh=self._refresh[1], quiet=True
                )
                if answer is not None:
                    return answer
                # Revoked or expired: back to the password, once.
                self._refresh = None
            if not self._post_unsupported:
                answer = await self._oauth(session, realm, scopes, creds, ssl, quiet=True)
                if answer is not None:
                    if answer.refresh_token is not None:
                        self._refresh = (identity, answer.refresh_token)
                    return answer
                answer = await self._get(session, realm, scopes, creds, ssl)
                # POST was refused but GET works with the same credentials: this endpoint
                # has no usable OAuth2 side, so stop trying it.
                self._post_unsupported = True
                return answer
            return await self._get(session, realm, scopes, creds, ssl)
        return await self._get(session, realm, scopes, None, ssl)

    async def _oauth(
        self,
        session: aiohttp.ClientSession,
        realm: str,
        scopes: list[str],
        creds: CredentialsLike,
        ssl: Any,
        *,
        refresh: Secret | None = None,
        quiet: bool = False,
    ) -> _TokenAnswer | None:
        """The OAuth2 POST (distribution "oauth" spec); None where GET should be tried.

        With ``quiet`` every 4xx means "try the next way" (registries refuse an unknown
        grant with 400, 401, 404 or 405); otherwise only 404/405 do, and other refusals
        are errors.
        """
        assert self.challenge is not None
        form: list[tuple[str, str]] = [("client_id", self._client_id)]
        if self.challenge.service:
            form.append(("service", self.challenge.service))
        if scopes:
            form.append(("scope", " ".join(scopes)))
        if refresh is not None:
            form += [("grant_type", "refresh_token"), ("refresh_token", refresh.reveal())]
        else:
            assert creds.username and creds.password
            form += [
                ("grant_type", "password"),
                ("username", creds.username),
                ("password", creds.password.reveal()),
                ("access_type", "offline"),
            ]
        status, body = await self._call(session, "POST", realm, data=form, ssl=ssl)
        if status == 200:
            return self._parse(body)
        if status in (404, 405):
            self._post_unsupported = True
            return None
        if quiet and 400 <= status < 500 and status != 429:
            return None
        self._raise(status, body, realm, creds, "POST")

    async def _get(
        self,
        session: aiohttp.ClientSession,
        realm: str,
        scopes: list[str],
        creds: CredentialsLike | None,
        ssl: Any,
    ) -> _TokenAnswer:
        assert self.challenge is not None
        query: list[tuple[str, str]] = []
        if self.challenge.service:
            query.append(("service", self.challenge.service))
        query.extend(("scope", s) for s in scopes)
        headers = {}
        if creds is not None and creds.username and creds.password:
            raw = f"{creds.username}:{creds.password.reveal()}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        status, body = await self._call(
            session, "GET", realm, params=query, headers=headers, ssl=ssl
        )
        if status == 200:
            return self._parse(body)
        self._raise(status, body, realm, creds, "GET")

    async def _call(
        self,
        session: aiohttp.ClientSession,
        method: str,
        realm: str,
        *,
        ssl: Any,
        params: list[tuple[str, str]] | None = None,
        data: list[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        host = urlsplit(realm).netloc
        try:
            async with session.request(
                method,
                realm,
                params=params,
                data=data,
                headers=headers,
                ssl=ssl,
                allow_redirects=False,
            ) as resp:
                return resp.status, await read_capped(resp, _MAX_TOKEN_BODY)
        except aiohttp.ClientConnectorCertificateError as e:
            raise TLSError(
                f"TLS certificate verification failed for token endpoint {host}: "
                f"{e.certificate_error}",
                registry=self.registry,
                method=method,
                url=_redact(realm),
            ) from None
        except TimeoutError:
            raise NetworkError(
                f"timed out talking to token endpoint {host}",
                registry=self.registry,
                method=method,
                url=_redact(realm),
            ) from None
        except aiohttp.ClientError as e:
            raise NetworkError(
                f"token endpoint {host} unreachable: {type(e).__name__}: {e}",
                registry=self.registry,
                method=method,
                url=_redact(realm),
            ) from None

    def _raise(
        self, status: int, body: bytes, realm: str, creds: CredentialsLike | None, method: str
    ) -> NoReturn:
        text = _error_text(body)
        detail = f"token endpoint answered {status}" + (f": {text}" if text else "")
        where: dict[str, Any] = dict(
            registry=self.registry, method=method, url=_redact(realm), status=status
        )
        if status in (400, 401, 403):
            user = f"user {creds.username}" if creds and creds.username else "anonymous"
            if creds is not None and creds.identity_token and not creds.username:
                user = "identity token"
            raise AuthError(
                f"authentication failed for {self.registry} ({user}): {detail}", **where
            )
        if status >= 500 or status == 429:
            raise ServerError(detail, **where)
        raise AuthError(detail, **where)

    def _parse(self, body: bytes) -> _TokenAnswer:
        try:
            doc = json.loads(body)
            value = doc.get("token") or doc.get("access_token")
            lifetime = float(doc.get("expires_in") or _DEFAULT_TOKEN_LIFETIME)
            refresh = doc.get("refresh_token")
        except (ValueError, AttributeError, TypeError):
            value, lifetime, refresh = None, 0.0, None
        if not isinstance(value, str) or not value:
            raise AuthError("token endpoint answered without a token", registry=self.registry)
        return _TokenAnswer(
            Secret(value),
            max(lifetime, 1.0),
            Secret(refresh) if isinstance(refresh, str) and refresh else None,
        )


def _key(scopes: Sequence[str]) -> tuple[str, ...]:
    return tuple(sorted(set(scopes)))


def _redact(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
