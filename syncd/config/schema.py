"""Frozen values of the config file described in the contract.

The loader (``config.load``) builds these after validation and resolves ``defaults`` into
each rule, so everything downstream reads one effective value per key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from syncd.secret import Secret

DEFAULT_INTERVAL = 300.0
DEFAULT_RETRIES = 5
DEFAULT_CONCURRENCY = 8
DEFAULT_MAX_CONCURRENCY = 8
DEFAULT_CLUSTER_PREFIX = "/syncd/"
DEFAULT_LEASE_TTL = 10.0
MIN_LEASE_TTL = 2.0


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
        return urlsplit(self.url).scheme if "://" in self.url else "https"

    @property
    def host(self) -> str:
        """``host[:port]`` as it appears in references and token scopes."""
        return urlsplit(self.url).netloc if "://" in self.url else self.url.rstrip("/")

    @property
    def base_url(self) -> str:
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
class EtcdConfig:
    """``cluster.etcd``: how to reach the etcd v3 cluster; paths are absolute."""

    endpoints: tuple[str, ...]
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    username: str | None = None
    password: Secret | None = None
    password_file: str | None = None


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """``cluster``: several replicas share the rules' work through etcd."""

    etcd: EtcdConfig
    name: str  # this replica's member name (default: the host name)
    prefix: str = DEFAULT_CLUSTER_PREFIX  # every key syncd writes starts with it
    lease_ttl: float = DEFAULT_LEASE_TTL
    # How many members the operator runs; only the "members fewer than configured" alert
    # reads it (through syncd_cluster_expected_members). None: no such alert.
    expected_members: int | None = None


@dataclass(frozen=True, slots=True)
class Config:
    """A whole, validated config file."""

    path: str
    registries: dict[str, RegistryConfig]
    rules: tuple[RuleConfig, ...]
    server: ServerConfig = field(default_factory=ServerConfig)
    cluster: ClusterConfig | None = None

    def rule(self, name: str) -> RuleConfig | None:
        return next((r for r in self.rules if r.name == name), None)
