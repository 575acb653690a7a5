"""Frozen values of the config file described in the contract.

The loader (``config.load``) builds these after validation and resolves ``defaults`` into
each rule, so everything downstream reads one effective value per key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from syncd.proxy import ProxyURL
from syncd.reference import DOCKER_HUB_API, is_docker_hub, split_origin
from syncd.secret import Secret

DEFAULT_INTERVAL = 300.0
DEFAULT_RETRIES = 5
DEFAULT_CONCURRENCY = 8
DEFAULT_MAX_CONCURRENCY = 8
DEFAULT_CLUSTER_PREFIX = "/syncd/"
DEFAULT_LEASE_TTL = 10.0
MIN_LEASE_TTL = 2.0
# ``url`` prefixes of OCI image layouts: a directory of layouts (one per repository) and a
# tar archive of one layout (read only). Longest first: ``oci-archive:`` starts with ``oci``.
LAYOUT_SCHEMES = ("oci-archive", "oci")
# A Retry-After longer than this fails the request at once instead of stalling the pass.
DEFAULT_MAX_RETRY_WAIT = 120.0


@dataclass(frozen=True, slots=True)
class AccountConfig:
    """One entry of a registry's ``credentials``: an account used in turn with the others."""

    username: str
    password: Secret | None = None
    password_file: str | None = None


@dataclass(frozen=True, slots=True)
class QuotaReserve:
    """``quota_reserve``: pulls kept back from a registry's budget, a count or a percentage."""

    amount: float = 10.0
    percent: bool = True

    def __str__(self) -> str:
        return f"{self.amount:g}%" if self.percent else f"{self.amount:g}"


DEFAULT_MAX_DELETIONS = 10
PRUNE_MODES = ("deleted", "unselected")


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
    # Every request of this registry goes through it (token realm and redirects too);
    # None: HTTPS_PROXY / HTTP_PROXY / NO_PROXY from the environment decide.
    proxy: ProxyURL | None = None
    # Several accounts, used in turn when one's pull budget is spent (instead of username).
    credentials: tuple[AccountConfig, ...] = ()
    # None: the default reserve (10%), and no budget is assumed until the registry sends one.
    quota_reserve: QuotaReserve | None = None
    requests_per_second: float | None = None
    max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT

    @property
    def layout(self) -> tuple[str, str] | None:
        """``(kind, path)`` for an OCI image layout url (``oci:PATH``, ``oci-archive:FILE``),
        else None (a registry)."""
        return layout_url(self.url)

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


def layout_url(url: str) -> tuple[str, str] | None:
    """``("oci", PATH)`` or ``("oci-archive", FILE)`` for a layout url, else None."""
    for kind in LAYOUT_SCHEMES:
        if url.startswith(f"{kind}:") and not url.startswith(f"{kind}://"):
            return kind, url[len(kind) + 1 :]
    return None


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
    # Retention at the targets (syncd.prune): None (off), "deleted" or "unselected".
    prune: str | None = None
    protect: tuple[str, ...] = ()  # regexes (searched) of tags never deleted
    max_deletions: int = DEFAULT_MAX_DELETIONS  # per target and pass; over it, none


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """``server:``; the ``--listen`` flag overrides ``listen``."""

    listen: str | None = None
    webhook_token: Secret | None = None


@dataclass(frozen=True, slots=True)
class StateConfig:
    """``state:``. The loader puts the default file in ``path``; None keeps the state in
    memory for the life of the process (``path: none``, and configs built in code)."""

    path: str | None = None


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
    state: StateConfig = field(default_factory=StateConfig)
    cluster: ClusterConfig | None = None

    def rule(self, name: str) -> RuleConfig | None:
        return next((r for r in self.rules if r.name == name), None)
