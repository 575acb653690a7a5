"""Where a registry's credentials come from, in one documented order of precedence.

1. ``username`` + ``password`` given inline (the loader already expanded ``${VAR}``).
2. ``username`` + ``password_file``: the file is read again whenever its mtime, size or
   inode changes, so a rotated token is picked up without a restart.
3. ``docker_config: true``: ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``,
   looked up the way the Docker CLI does it: ``credHelpers[host]``, then ``credsStore``
   (both run ``docker-credential-<name> get`` with the server URL on stdin), then
   ``auths[host]`` (``auth`` = base64 ``user:password``, or ``identitytoken``).
4. Nothing: anonymous.

The first source the config names wins; a later one is never consulted as a fallback,
so an operator can always tell which secret is in use. Values are ``Secret`` so they can
not be logged by accident; this module logs only sources, hosts and helper names.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syncd.config.schema import RegistryConfig
from syncd.errors import AuthError
from syncd.reference import DOCKER_HUB_ALIASES, split_origin
from syncd.secret import Secret

log = logging.getLogger(__name__)

# Docker Hub answers to several names; the Docker CLI files its credentials under the
# legacy index URL, so every alias must find that entry (and the other way round).
DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/"
_DOCKER_HUB_ALIASES = DOCKER_HUB_ALIASES
# A Username of "<token>" in a helper reply means the Secret is an identity token
# (docker-credential-helpers, credentials.Credentials / client.Get).
IDENTITY_TOKEN_USERNAME = "<token>"  # noqa: S105 (a marker, not a secret)
# Helpers such as docker-credential-ecr-login call remote APIs; bound them so a hung
# helper fails one pass instead of blocking it forever.
HELPER_TIMEOUT = 30.0
# How long an answer from a helper is reused. Helpers are processes (and often network
# calls), while the authenticator asks for credentials on every Basic-auth request.
HELPER_CACHE_SECONDS = 300.0
_MAX_HELPER_OUTPUT = 64 * 1024
_MAX_CONFIG_BYTES = 4 * 1024 * 1024
_NOT_FOUND_MARKER = "credentials not found"


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a registry login needs; every field may be absent (anonymous).

    ``identity_token`` is an OAuth2 refresh token for the registry's token endpoint
    (Docker's ``identitytoken``); when it is set, ``password`` is normally None.
    """

    username: str | None = None
    password: Secret | None = None
    identity_token: Secret | None = None

    @property
    def anonymous(self) -> bool:
        return not (self.password or self.identity_token)


ANONYMOUS = Credentials()


def normalize_host(server: str) -> str:
    """Docker's ``ConvertToHostname``: drop the scheme and any path, keep ``host:port``.

    Docker Hub's aliases all map to ``docker.io`` so that they match one another.
    """
    # Normalised like every registry origin: lower case, the scheme's default port dropped.
    host = split_origin(server)[1]
    return "docker.io" if host in _DOCKER_HUB_ALIASES else host


def helper_server_url(host: str) -> str:
    """The server URL a credential helper is asked about (Docker's own convention)."""
    return DOCKER_HUB_CONFIG_KEY if normalize_host(host) == "docker.io" else host


def docker_config_path(env: Mapping[str, str] | None = None) -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
    env = os.environ if env is None else env
    directory = env.get("DOCKER_CONFIG")
    if directory:
        return Path(directory) / "config.json"
    home = env.get("HOME")
    base = Path(home) if home else Path.home()
    return base / ".docker" / "config.json"


def _lookup(mapping: object, host: str) -> tuple[str, Any] | None:
    """The entry of a ``auths``/``credHelpers`` mapping whose key names ``host``."""
    if not isinstance(mapping, dict):
        return None
    wanted = normalize_host(host)
    # An exact key first (Docker does the same), then any spelling of the same host.
    if host in mapping:
        return host, mapping[host]
    for key, value in mapping.items():
        if isinstance(key, str) and normalize_host(key) == wanted:
            return key, value
    return None


def _decode_auth(value: str, registry: str) -> tuple[str, str]:
    try:
        raw = base64.b64decode(value.strip(), validate=False).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise AuthError(
            "docker config: the 'auth' entry is not base64 of user:password", registry=registry
        ) from None
    user, sep, password = raw.partition(":")
    if not sep or not user:
        raise AuthError(
            "docker config: the 'auth' entry is not base64 of user:password", registry=registry
        )
    return user, password


class CredentialSource:
    """Answers ``await get()`` with the current credentials of one registry.

    The base class is the anonymous source; subclasses read a file or Docker's config.
    ``get`` is cheap when nothing changed: it may be called for every request.
    """

    #: A short, secret-free description for logs and errors ("inline", "password_file …").
    description = "anonymous"

    def __init__(self, registry: str) -> None:
        self.registry = registry

    async def get(self) -> Credentials:
        """The credentials to use now."""
        return ANONYMOUS

    def invalidate(self) -> None:
        """Forget anything cached, so the next ``get`` reads the source again.

        The authenticator calls this when the registry refuses the credentials: a helper
        may hand out a fresher answer.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.registry!r}, {self.description})"


class StaticSource(CredentialSource):
    """Inline ``username``/``password`` from the config."""

    description = "inline"

    def __init__(self, registry: str, creds: Credentials) -> None:
        super().__init__(registry)
        self._creds = creds

    async def get(self) -> Credentials:
        return self._creds


class PasswordFileSource(CredentialSource):
    """``username`` + a password read from ``password_file``, re-read when it changes.

    Kubernetes rotates mounted secrets by swapping a symlink, which changes the inode the
    path resolves to; other rotators rewrite in place, which changes mtime or size. Any of
    the three triggers a re-read, and a ``stat`` per call is the whole cost otherwise.
    """

    def __init__(self, registry: str, username: str | None, path: str) -> None:
        super().__init__(registry)
        self.username = username
        self.path = path
        self.description = f"password_file {path}"
        self._stamp: tuple[int, int, int] | None = None
        self._creds = ANONYMOUS

    async def get(self) -> Credentials:
        # A stat and, rarely, a read of a few bytes: cheaper than a thread hop.
        return self._current()

    def _current(self) -> Credentials:
        try:
            st = os.stat(self.path)
        except OSError as e:
            raise AuthError(
                f"cannot read password_file {self.path}: {e.strerror or e}",
                registry=self.registry,
            ) from None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return self._creds
        try:
            text = Path(self.path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise AuthError(
                f"cannot read password_file {self.path}: {e}", registry=self.registry
            ) from None
        # Files written by `echo` or editors end in a newline that is not part of the
        # secret; inner whitespace is kept.
        value = text.rstrip("\r\n")
        if self._stamp is not None:
            log.info(
                "registry %s: password_file changed, using the new password",
                self.registry,
                extra={"registry": self.registry, "event": "credentials_reloaded"},
            )
        self._creds = Credentials(self.username, Secret(value) if value else None)
        self._stamp = stamp
        return self._creds

    def invalidate(self) -> None:
        self._stamp = None


class DockerConfigSource(CredentialSource):
    """Credentials from Docker's ``config.json``, its credential helpers and stores."""

    def __init__(
        self,
        registry: str,
        host: str,
        *,
        config_path: Path | None = None,
        helper_timeout: float = HELPER_TIMEOUT,
        cache_seconds: float = HELPER_CACHE_SECONDS,
    ) -> None:
        super().__init__(registry)
        self.host = host
        self._config_path = config_path
        self.helper_timeout = helper_timeout
        self.cache_seconds = cache_seconds
        self.description = "docker_config"
        self._lock = asyncio.Lock()
        self._stamp: tuple[str, int, int, int] | None = None
        self._creds = ANONYMOUS
        self._expires = 0.0

    @property
    def config_path(self) -> Path:
        # Resolved per call: DOCKER_CONFIG may be set after the config was loaded.
        return self._config_path or docker_config_path()

    def _config_stamp(self) -> tuple[str, int, int, int]:
        path = self.config_path
        try:
            st = path.stat()
        except OSError:
            return (str(path), 0, 0, 0)
        return (str(path), st.st_mtime_ns, st.st_size, st.st_ino)

    async def get(self) -> Credentials:
        stamp = self._config_stamp()
        if stamp == self._stamp and time.monotonic() < self._expires:
            return self._creds
        async with self._lock:
            # Another caller may have refreshed while we waited for the lock.
            stamp = self._config_stamp()
            if stamp == self._stamp and time.monotonic() < self._expires:
                return self._creds
            creds, from_helper = await self._resolve()
            self._creds = creds
            self._stamp = stamp
            # Static entries stay valid until the file changes; helper answers may be
            # short-lived tokens, so they are asked again after a while.
            self._expires = time.monotonic() + (self.cache_seconds if from_helper else 1e12)
            return creds

    def invalidate(self) -> None:
        self._stamp = None
        self._expires = 0.0

    def _read_config(self) -> dict[str, Any]:
        path = self.config_path
        try:
            with path.open("rb") as f:
                data = f.read(_MAX_CONFIG_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise AuthError(
                f"cannot read docker config {path}: {e.strerror or e}", registry=self.registry
            ) from None
        if len(data) > _MAX_CONFIG_BYTES:
            raise AuthError(f"docker config {path} is too large", registry=self.registry)
        try:
            doc = json.loads(data) if data.strip() else {}
        except ValueError as e:
            # The position only: the text around it may hold a secret.
            raise AuthError(
                f"docker config {path} is not valid JSON (line {getattr(e, 'lineno', '?')})",
                registry=self.registry,
            ) from None
        if not isinstance(doc, dict):
            raise AuthError(f"docker config {path} is not a JSON object", registry=self.registry)
        return doc

    async def _resolve(self) -> tuple[Credentials, bool]:
        doc = self._read_config()
        path = self.config_path
        helpers = _lookup(doc.get("credHelpers"), self.host)
        if helpers is not None and isinstance(helpers[1], str) and helpers[1]:
            creds = await self._run_helper(helpers[1])
            if creds is not None:
                return creds, True
        store = doc.get("credsStore")
        if isinstance(store, str) and store:
            creds = await self._run_helper(store)
            if creds is not None:
                return creds, True
        entry = _lookup(doc.get("auths"), self.host)
        if entry is not None and isinstance(entry[1], dict):
            creds = self._from_auths_entry(entry[1])
            if not creds.anonymous:
                log.debug(
                    "registry %s: credentials from %s auths[%s]",
                    self.registry,
                    path,
                    entry[0],
                    extra={"registry": self.registry},
                )
                return creds, False
        log.debug(
            "registry %s: no credentials for %s in %s; anonymous",
            self.registry,
            self.host,
            path,
            extra={"registry": self.registry},
        )
        return ANONYMOUS, False

    def _from_auths_entry(self, entry: dict[str, Any]) -> Credentials:
        username: str | None = None
        password: Secret | None = None
        auth = entry.get("auth")
        if isinstance(auth, str) and auth:
            user, pw = _decode_auth(auth, self.registry)
            username, password = user, Secret(pw) if pw else None
        else:
            # Older configs (and some tools) write the two fields separately.
            user_field, pw_field = entry.get("username"), entry.get("password")
            if isinstance(user_field, str) and user_field:
                username = user_field
            if isinstance(pw_field, str) and pw_field:
                password = Secret(pw_field)
        token = entry.get("identitytoken")
        if isinstance(token, str) and token:
            # With an identity token the password is never used (Docker does the same).
            return Credentials(username, None, Secret(token))
        return Credentials(username, password)

    async def _run_helper(self, name: str) -> Credentials | None:
        """Run ``docker-credential-<name> get``; None when it has nothing for this host."""
        program = f"docker-credential-{name}"
        server = helper_server_url(self.host)
        where = f"credential helper {program} for registry {self.registry} ({self.host})"
        try:
            proc = await asyncio.create_subprocess_exec(
                program,
                "get",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except FileNotFoundError:
            raise AuthError(
                f"{where}: {program} not found on PATH", registry=self.registry
            ) from None
        except OSError as e:
            raise AuthError(
                f"{where}: cannot run: {e.strerror or e}", registry=self.registry
            ) from None
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(server.encode() + b"\n"), self.helper_timeout
            )
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AuthError(
                f"{where}: timed out after {self.helper_timeout:g}s", registry=self.registry
            ) from None
        out, err = out[:_MAX_HELPER_OUTPUT], err[:_MAX_HELPER_OUTPUT]
        if proc.returncode != 0:
            message = _helper_message(out, err)
            if _NOT_FOUND_MARKER in message.lower():
                log.debug(
                    "registry %s: %s has no credentials for %s",
                    self.registry,
                    program,
                    server,
                    extra={"registry": self.registry},
                )
                return None
            raise AuthError(
                f"{where}: exited with status {proc.returncode}"
                + (f": {message}" if message else ""),
                registry=self.registry,
            )
        try:
            doc = json.loads(out)
            username = doc.get("Username")
            secret = doc.get("Secret")
        except (ValueError, AttributeError):
            # Never echo the output: it is the secret when the JSON is merely malformed.
            raise AuthError(f"{where}: answer is not JSON", registry=self.registry) from None
        if not isinstance(secret, str) or not secret:
            return None
        log.debug(
            "registry %s: credentials from %s",
            self.registry,
            program,
            extra={"registry": self.registry},
        )
        if username == IDENTITY_TOKEN_USERNAME:
            return Credentials(None, None, Secret(secret))
        return Credentials(
            username if isinstance(username, str) and username else None, Secret(secret)
        )


def _helper_message(out: bytes, err: bytes) -> str:
    """The helper's own error text (first line, cut short); never JSON, which may hold a secret."""
    for stream in (out, err):
        text = stream.decode("utf-8", "replace").strip()
        if not text or text.startswith("{"):
            continue
        return text.splitlines()[0][:200]
    return ""


def account_sources(reg: RegistryConfig) -> list[CredentialSource]:
    """One source per account of ``credentials`` (used in turn), else the single source."""
    if not reg.credentials:
        return [credential_source(reg)]
    return [
        StaticSource(reg.name, Credentials(a.username, a.password))
        if a.password
        else PasswordFileSource(reg.name, a.username, a.password_file or "")
        for a in reg.credentials
    ]


def credential_source(reg: RegistryConfig) -> CredentialSource:
    """The credential source a registry's config asks for, by the module's precedence."""
    if reg.password:
        return StaticSource(reg.name, Credentials(reg.username, reg.password))
    if reg.password_file:
        return PasswordFileSource(reg.name, reg.username, reg.password_file)
    if reg.docker_config:
        return DockerConfigSource(reg.name, reg.host)
    return CredentialSource(reg.name)
