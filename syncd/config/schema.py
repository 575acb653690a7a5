"""The config file, declared once: each key, its type, its default and its checks.

These frozen dataclasses are at the same time what ``syncd validate`` checks a file against
(pydantic validates them from the YAML, ``config.load`` turns its errors into
file:line:column problems), what ``syncd schema`` prints (``config.json_schema``) and the
values the rest of syncd reads. Adding a key is one field here and its line in
docs/config.md. Validated from a file (with a ``LoadContext``), relative paths are taken from
the file's directory, ``defaults`` are merged into each rule, and a registry is named after
its key; built in code, values are taken as given (and still checked).
"""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.dataclasses import dataclass

from syncd.config.values import (
    DEFAULT_CLUSTER_PREFIX,
    DEFAULT_LEASE_TTL,
    DEFAULT_MAX_CONCURRENCY,
    LAYOUT_SCHEMES,
    MIN_LEASE_TTL,
    Backup,
    Count,
    Cron,
    Duration,
    DurationOrZero,
    EtcdEndpoint,
    File,
    Flag,
    KeyPrefix,
    LeaseTTL,
    Listen,
    MediaType,
    MemberName,
    NonEmpty,
    OneOrMany,
    Platform,
    Positive,
    Proxy,
    QuotaReserve,
    RegexList,
    RegistryURL,
    Repository,
    Reserve,
    RuleName,
    SecretText,
    Semver,
    Tag,
    TargetPrefix,
    Unique,
    context_of,
    layout_url,
    resolve,
)
from syncd.proxy import ProxyURL
from syncd.reference import DOCKER_HUB_API, is_docker_hub, split_origin

__all__ = [
    "DEFAULT_CLUSTER_PREFIX",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_INTERVAL",
    "DEFAULT_LEASE_TTL",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_MAX_DELETIONS",
    "DEFAULT_MAX_RETRY_WAIT",
    "DEFAULT_RETRIES",
    "LAYOUT_SCHEMES",
    "MIN_LEASE_TTL",
    "PRUNE_MODES",
    "AccountConfig",
    "ClusterConfig",
    "Config",
    "DefaultsConfig",
    "EtcdConfig",
    "QuotaReserve",
    "RegistryConfig",
    "RuleConfig",
    "ServerConfig",
    "StateConfig",
    "TagFilter",
    "layout_url",
]

DEFAULT_INTERVAL = 300.0
DEFAULT_RETRIES = 5
DEFAULT_CONCURRENCY = 8
# A Retry-After longer than this fails the request at once instead of stalling the pass.
DEFAULT_MAX_RETRY_WAIT = 120.0
DEFAULT_MAX_DELETIONS = 10
PRUNE_MODES = ("deleted", "unselected")

# ``extra="forbid"``: an unknown key is an error (with a did-you-mean). Scalars are strict
# through their types (``syncd.config.values``). hide_input_in_errors: even a
# ValidationError printed by accident shows no values.
_FILE = ConfigDict(extra="forbid", hide_input_in_errors=True)

# Fields the file does not spell: they come from where the value sits (a registry's key, the
# file's path). ``config.load`` rejects them as unknown keys and ``syncd schema`` omits them.
NOT_IN_FILE: dict[str, frozenset[str]] = {
    "Config": frozenset({"path"}),
    "RegistryConfig": frozenset({"name"}),
}

Targets = Annotated[tuple[NonEmpty, ...], OneOrMany, Field(min_length=1), Unique]
Repositories = Annotated[tuple[Repository, ...], OneOrMany, Field(min_length=1), Unique]


@dataclass(frozen=True, slots=True, config=_FILE)
class AccountConfig:
    """One entry of a registry's ``credentials``: an account used in turn with the others."""

    username: NonEmpty
    password: SecretText | None = None
    password_file: File | None = None


@dataclass(frozen=True, slots=True, config=_FILE)
class RegistryConfig:
    """One named endpoint of ``registries:``."""

    name: NonEmpty
    url: RegistryURL
    username: NonEmpty | None = None
    password: SecretText | None = None
    password_file: File | None = None
    docker_config: Flag = False
    ca_file: File | None = None
    tls_verify: Flag = True
    client_cert: File | None = None
    client_key: File | None = None
    max_concurrency: Count = DEFAULT_MAX_CONCURRENCY
    allow_insecure_auth: Flag = False
    # Every request of this registry goes through it (token realm and redirects too);
    # None: HTTPS_PROXY / HTTP_PROXY / NO_PROXY from the environment decide.
    proxy: Proxy | None = None
    # Several accounts, used in turn when one's pull budget is spent (instead of username).
    # Empty: the single-account keys apply. Given in the file, at least one entry (a check
    # of the file, not of the value: ``dataclasses.replace`` re-validates the default).
    credentials: tuple[AccountConfig, ...] = ()
    # None: the default reserve (10%), and no budget is assumed until the registry sends one.
    quota_reserve: Reserve | None = None
    requests_per_second: Positive | None = None
    # Without the key: ``defaults.max_retry_wait``, else DEFAULT_MAX_RETRY_WAIT.
    max_retry_wait: Duration = DEFAULT_MAX_RETRY_WAIT

    @model_validator(mode="after")
    def _proxy_origin(self) -> RegistryConfig:
        if self.proxy is not None and not self.proxy.origin:
            # Messages about the proxy name the key it was set at.
            origin = f"registries.{self.name}.proxy"
            object.__setattr__(self, "proxy", _with_origin(self.proxy, origin))
        return self

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


def _with_origin(proxy: ProxyURL, origin: str) -> ProxyURL:
    return ProxyURL(proxy.url, proxy.username, proxy.password, origin)


def _tag_list(value: Any) -> Any:
    # "tags: [v1, latest]" is an explicit list of tags; "tags:" alone, no filter.
    if value is None:
        return {}
    if isinstance(value, list | str):
        return {"names": [value] if isinstance(value, str) else value}
    return value


@dataclass(frozen=True, slots=True, config=_FILE)
class TagFilter:
    """``tags:`` of a rule, applied in order: names, include, exclude, semver, newest.
    Written as a list, it is ``names``."""

    names: Annotated[tuple[Tag, ...], Unique] = ()
    include: RegexList = ()
    exclude: RegexList = ()
    semver: Semver | None = None
    newest: Count | None = None


@dataclass(frozen=True, slots=True, config=_FILE)
class DefaultsConfig:
    """``defaults``: merged into every rule (and registry) that does not set the key."""

    interval: Duration | None = None
    schedule: Cron | None = None
    retries: Count | None = None
    concurrency: Count | None = None
    target_recheck: DurationOrZero | None = None
    # Applies to registries (not rules): the default of their own max_retry_wait.
    max_retry_wait: Duration | None = None


@dataclass(frozen=True, slots=True, config=_FILE)
class RuleConfig:
    """One rule, with ``defaults`` already applied."""

    name: RuleName
    source: NonEmpty
    targets: Targets
    repositories: Repositories
    tags: Annotated[
        TagFilter,
        BeforeValidator(_tag_list, json_schema_input_type=list[str] | str | TagFilter | None),
    ] = field(default_factory=TagFilter)
    platforms: Annotated[tuple[Platform, ...], OneOrMany, Unique] = ()
    target_prefix: TargetPrefix = ""
    overwrite: Flag = True
    backup: Backup | None = None
    immutable_tags: RegexList = ()
    referrers: Flag = True
    referrers_types: Annotated[tuple[MediaType, ...], OneOrMany] = ()
    require_signature: Flag = False
    interval: Duration = DEFAULT_INTERVAL
    schedule: Cron | None = None
    retries: Count = DEFAULT_RETRIES
    concurrency: Count = DEFAULT_CONCURRENCY
    # Seconds a target tag the daemon pushed or checked is trusted without a HEAD; 0: never.
    target_recheck: DurationOrZero = 0.0
    # Retention at the targets (syncd.prune): None (off), "deleted" or "unselected".
    prune: Literal["deleted", "unselected"] | None = None
    protect: RegexList = ()  # regexes (searched) of tags never deleted
    max_deletions: Count = DEFAULT_MAX_DELETIONS  # per target and pass; over it, none


@dataclass(frozen=True, slots=True, config=_FILE)
class ServerConfig:
    """``server:``; the ``--listen`` flag overrides ``listen``."""

    listen: Listen | None = None
    webhook_token: SecretText | None = None


@dataclass(frozen=True, slots=True, config=_FILE)
class StateConfig:
    """``state:``. Loaded from a file, ``path`` without the key is the default file, and
    ``none`` is None: the state is kept in memory for the life of the process (as in
    configs built in code)."""

    path: NonEmpty | None = None


@dataclass(frozen=True, slots=True, config=_FILE)
class EtcdConfig:
    """``cluster.etcd``: how to reach the etcd v3 cluster; paths are absolute."""

    endpoints: Annotated[tuple[EtcdEndpoint, ...], OneOrMany, Field(min_length=1), Unique]
    ca_file: File | None = None
    client_cert: File | None = None
    client_key: File | None = None
    username: NonEmpty | None = None
    password: SecretText | None = None
    password_file: File | None = None


@dataclass(frozen=True, slots=True, config=_FILE)
class ClusterConfig:
    """``cluster``: several replicas share the rules' work through etcd."""

    etcd: EtcdConfig
    # This replica's member name. Every replica runs the same file, so the name that tells
    # them apart defaults to the host name (a pod's name under Kubernetes).
    name: MemberName = ""
    prefix: KeyPrefix = DEFAULT_CLUSTER_PREFIX  # every key syncd writes starts with it
    lease_ttl: LeaseTTL = DEFAULT_LEASE_TTL
    # How many members the operator runs; only the "members fewer than configured" alert
    # reads it (through syncd_cluster_expected_members). None: no such alert.
    expected_members: Count | None = None


@dataclass(frozen=True, slots=True, config=_FILE)
class Config:
    """A whole, validated config file."""

    path: str
    registries: dict[str, RegistryConfig]
    rules: Annotated[tuple[RuleConfig, ...], Field(min_length=1)]
    server: ServerConfig = field(default_factory=ServerConfig)
    state: StateConfig = field(default_factory=StateConfig)
    cluster: ClusterConfig | None = None
    # Already merged into ``rules`` and ``registries``; kept for ``syncd schema``.
    defaults: DefaultsConfig = field(default_factory=DefaultsConfig, compare=False)

    def rule(self, name: str) -> RuleConfig | None:
        return next((r for r in self.rules if r.name == name), None)

    @model_validator(mode="before")
    @classmethod
    def _from_file(cls, data: Any, info: ValidationInfo) -> Any:
        """A document read from a file: what it leaves to its place and to ``defaults``."""
        ctx = context_of(info)
        if ctx is None or not isinstance(data, dict):
            return data
        data = dict(data)
        data["path"] = ctx.filename
        defaults = _valid_defaults(data.get("defaults"))
        registries = data.get("registries")
        if isinstance(registries, dict):
            data["registries"] = {
                name: _registry_defaults(name, reg, defaults) for name, reg in registries.items()
            }
        rules = data.get("rules")
        if isinstance(rules, list):
            data["rules"] = [_rule_defaults(r, defaults) for r in rules]
        state = data.get("state")
        if state is None:
            data["state"] = {"path": ctx.state_path}
        elif isinstance(state, dict):
            path = state.get("path")
            if path is None:
                data["state"] = {**state, "path": ctx.state_path}
            elif isinstance(path, str) and path.lower() == "none":
                data["state"] = {**state, "path": None}
            elif isinstance(path, str) and path:
                data["state"] = {**state, "path": resolve(ctx.base_dir, path)}
        cluster = data.get("cluster")
        if isinstance(cluster, dict):
            if cluster.get("name") is None:
                cluster = {**cluster, "name": ctx.host_name}
            etcd = cluster.get("etcd")
            if isinstance(etcd, dict) and isinstance(etcd.get("endpoints"), list | str):
                endpoints = etcd["endpoints"]
                listed = [endpoints] if isinstance(endpoints, str) else endpoints
                cluster = {
                    **cluster,
                    "etcd": {
                        **etcd,
                        "endpoints": [e.rstrip("/") if isinstance(e, str) else e for e in listed],
                    },
                }
            data["cluster"] = cluster
        return data


_DEFAULTS = TypeAdapter(DefaultsConfig)


def _valid_defaults(raw: Any) -> DefaultsConfig:
    """``defaults`` if it is valid; its own errors are reported at its keys."""
    try:
        return _DEFAULTS.validate_python(raw if raw is not None else {})
    except ValidationError:
        return DefaultsConfig()


def _registry_defaults(name: str, reg: Any, d: DefaultsConfig) -> Any:
    if not isinstance(reg, dict):
        return reg
    reg = {**reg, "name": name}
    if "max_retry_wait" not in reg and d.max_retry_wait is not None:
        reg["max_retry_wait"] = d.max_retry_wait
    return reg


def _rule_defaults(rule: Any, d: DefaultsConfig) -> Any:
    if not isinstance(rule, dict):
        return rule
    # A rule that names its own timing replaces the default timing as a whole: a rule's
    # interval beats a default schedule, and a rule's schedule beats a default interval.
    own_timing = "interval" in rule or "schedule" in rule
    rule = dict(rule)
    if "interval" not in rule and d.interval is not None:
        rule["interval"] = d.interval
    if not own_timing and d.schedule is not None:
        rule["schedule"] = d.schedule
    for key in ("retries", "concurrency", "target_recheck"):
        value = getattr(d, key)
        if key not in rule and value is not None:
            rule[key] = value
    return rule
