"""Frozen values of the config file described in the contract.

The loader (``config.load``) builds these after validation and resolves ``defaults`` into
each rule, so everything downstream reads one effective value per key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from syncd.reference import DOCKER_HUB_API, is_docker_hub, split_origin
from syncd.secret import Secret

DEFAULT_INTERVAL = 300.0
DEFAULT_RETRIES = 5
DEFAULT_CONCURRENCY = 8
DEFAULT_MAX_CONCURRENCY = 8


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """One named endpoint of ``registries:``."""

    name: str
    url: str
    username: str | None = None
    password: Secret | None = None
    password_file: str | None = None
    docker_config: bool = False
    ca_file: str | None = None
    tls_verify: bool = True
    client_cert: str | None = None
    client_key: str | None = None
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    allow_insecure_auth: bool = False

    @property
    def scheme(self) -> str:
        """``http`` or ``https``; a bare ``host:port`` means https."""
        return split_origin(self.url)[0]

    @property
    def docker_hub(self) -> bool:
        """Whether ``url`` names Docker Hub (any of its aliases)."""
        return is_docker_hub(split_origin(self.url)[1])

    @property
    def host(self) -> str:
        """``host[:port]`` the API is reached at, normalised (lower case, no default port);
        Docker Hub's aliases all mean its API host, ``registry-1.docker.io``."""
        host = split_origin(self.url)[1]
        return DOCKER_HUB_API if is_docker_hub(host) else host

    @property
    def base_url(self) -> str:
        """The normalised origin requests go to; two registries with equal ``base_url``
        are the same registry, however their ``url`` is spelled."""
        return f"{self.scheme}://{self.host}"


@dataclass(frozen=True, slots=True)
class TagFilter:
    """``tags:`` of a rule, applied in order: names, include, exclude, semver, newest."""

    names: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    semver: str | None = None
    newest: int | None = None


@dataclass(frozen=True, slots=True)
class RuleConfig:
    """One rule, with ``defaults`` already applied."""

    name: str
    source: str
    targets: tuple[str, ...]
    repositories: tuple[str, ...]
    tags: TagFilter = field(default_factory=TagFilter)
    platforms: tuple[str, ...] = ()
    target_prefix: str = ""
    overwrite: bool = True
    backup: str | None = None
    immutable_tags: tuple[str, ...] = ()
    referrers: bool = True
    referrers_types: tuple[str, ...] = ()
    require_signature: bool = False
    interval: float = DEFAULT_INTERVAL
    schedule: str | None = None
    retries: int = DEFAULT_RETRIES
    concurrency: int = DEFAULT_CONCURRENCY
    # Seconds a target tag the daemon pushed or checked is trusted without a HEAD; 0: never.
    target_recheck: float = 0.0


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """``server:``; the ``--listen`` flag overrides ``listen``."""

    listen: str | None = None
    webhook_token: Secret | None = None


@dataclass(frozen=True, slots=True)
class Config:
    """A whole, validated config file."""

    path: str
    registries: dict[str, RegistryConfig]
    rules: tuple[RuleConfig, ...]
    server: ServerConfig = field(default_factory=ServerConfig)

    def rule(self, name: str) -> RuleConfig | None:
        return next((r for r in self.rules if r.name == name), None)
