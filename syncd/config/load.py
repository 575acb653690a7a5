"""Load a config file: YAML with positions, ``${VAR}``, pydantic validation, file:line:column.

Three stages, every one of which keeps going after a problem so that ``syncd validate`` reports
all of them at once:

1. ``_PositionLoader`` (a ``yaml.SafeLoader``) turns the YAML into plain dicts, lists and
   scalars, records the line and column of every mapping key and value under its key path,
   and expands ``${VAR}`` in string values (``$${`` is a literal ``${``).
2. pydantic models (``extra="forbid"``, strict types) check each key and value; every error's
   ``loc`` is walked back through the data to the YAML node it came from.
3. Checks that span the document (registry names that rules refer to, duplicate rule names,
   a rule copying onto itself, files that must exist) run on the same data.

Problem keys are dotted paths with list indices: ``rules[0].tags.include[1]``,
``registries.dev.url``. Messages never carry secret values: passwords and tokens are not
echoed, and a value that came from the environment is shown as ``(value from the
environment)``.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_core import ErrorDetails

from syncd.config.schema import (
    DEFAULT_CLUSTER_PREFIX,
    DEFAULT_CONCURRENCY,
    DEFAULT_INTERVAL,
    DEFAULT_LEASE_TTL,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_DELETIONS,
    DEFAULT_MAX_RETRY_WAIT,
    DEFAULT_RETRIES,
    MIN_LEASE_TTL,
    AccountConfig,
    ClusterConfig,
    Config,
    EtcdConfig,
    QuotaReserve,
    RegistryConfig,
    RuleConfig,
    ServerConfig,
    StateConfig,
    TagFilter,
    layout_url,
)
from syncd.durations import parse_duration
from syncd.errors import ConfigError, ConfigProblem, InvalidReferenceError
from syncd.proxy import parse_proxy_url
from syncd.reference import is_docker_hub, split_origin, validate_repository, validate_tag
from syncd.rules import backup_template_problem, is_glob, repository_matches, target_repository
from syncd.secret import Secret
from syncd.state_sqlite import default_state_path

Path = tuple[str | int, ...]

REGISTRY_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
RULE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENV_TOKEN_RE = re.compile(r"\$\$\{|\$\{")
_PLATFORM_RE = re.compile(r"^[a-z0-9_.-]+/[a-z0-9_.-]+(?:/[a-z0-9_.-]+)?$")
_MEDIA_TYPE_RE = re.compile(r"^[A-Za-z0-9][\w.+-]*/[A-Za-z0-9][\w.+-]*$")
_HOST_PORT_RE = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::(\d{1,5}))?$"
)
# Bounds that keep a hostile or broken file from exhausting memory: YAML aliases can expand
# exponentially ("billion laughs"), and nothing legitimate comes near these.
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_NODES = 200_000
MAX_DEPTH = 64

# Values a validator echoes are wrapped in these marks; when the problem is rendered they are
# dropped, or the whole value is replaced if it came from the environment.
_SHOW_START, _SHOW_END = "\x00", "\x01"
_FROM_ENV = "(value from the environment)"


def _show(value: str) -> str:
    return f"{_SHOW_START}{value!r}{_SHOW_END}"


def _kind(value: object) -> str:
    """What a YAML value is, for 'expected X, got Y' (never the value itself)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


# --------------------------------------------------------------------------- stage 1: YAML


@dataclass(frozen=True, slots=True)
class _Pos:
    """1-based line and column of a key (if the value sits in a mapping) and of its value."""

    key: tuple[int, int] | None
    value: tuple[int, int]


@dataclass(slots=True)
class _RawProblem:
    path: Path
    message: str
    at_key: bool = False
    where: tuple[int, int] | None = None  # for a node the path does not lead to


@dataclass(slots=True)
class _Document:
    data: Any
    positions: dict[Path, _Pos] = field(default_factory=dict)
    problems: list[_RawProblem] = field(default_factory=list)
    # Paths whose value was built from the environment (never echo them), and paths whose
    # interpolation failed (their own validation errors would only repeat the problem).
    from_env: set[Path] = field(default_factory=set)
    broken: set[Path] = field(default_factory=set)


class _TooLargeError(Exception):
    pass


def _mark(mark: yaml.Mark) -> tuple[int, int]:
    return mark.line + 1, mark.column + 1


class _PositionLoader(yaml.SafeLoader):
    """A SafeLoader that builds plain values and records where every key and value stands.

    Mapping keys are taken as written (their text), since every key of the config is a name;
    so ``123:`` or ``on:`` stay strings instead of turning into an int or a boolean.
    Duplicate keys, which PyYAML would silently resolve to the last one, are problems.
    """

    def __init__(self, text: str, environ: Mapping[str, str]) -> None:
        super().__init__(text)
        self.environ = environ
        self.doc = _Document(data=None)
        self._nodes = 0
        self._stack: set[int] = set()

    def load_document(self) -> _Document:
        node = self.get_single_node()
        if node is not None:
            self.doc.positions[()] = _Pos(None, _mark(node.start_mark))
            self.doc.data = self._build(node, ())
        return self.doc

    def _build(self, node: yaml.Node, path: Path) -> Any:
        self._nodes += 1
        if self._nodes > MAX_NODES or len(path) > MAX_DEPTH:
            raise _TooLargeError
        if id(node) in self._stack:
            self.doc.broken.add(path)
            self.doc.problems.append(_RawProblem(path, "an alias refers to itself"))
            return None
        if isinstance(node, yaml.MappingNode):
            self._stack.add(id(node))
            try:
                return self._build_mapping(node, path)
            finally:
                self._stack.discard(id(node))
        if isinstance(node, yaml.SequenceNode):
            self._stack.add(id(node))
            try:
                items = []
                for i, child in enumerate(node.value):
                    self.doc.positions[(*path, i)] = _Pos(None, _mark(child.start_mark))
                    items.append(self._build(child, (*path, i)))
                return items
            finally:
                self._stack.discard(id(node))
        value = self.construct_object(node, deep=True)
        if isinstance(value, str) and "${" in value:
            value = self._interpolate(value, path)
        return value

    def _build_mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, Any]:
        self.flatten_mapping(node)  # resolves "<<: *anchor" merges, as SafeLoader does
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.doc.positions[(*path, "?")] = _Pos(
                    _mark(key_node.start_mark), _mark(value_node.start_mark)
                )
                self.doc.problems.append(
                    _RawProblem((*path, "?"), "a key must be a plain name", at_key=True)
                )
                continue
            key = str(key_node.value)
            key_path = (*path, key)
            if key in result:
                first = self.doc.positions[key_path].key
                line = first[0] if first else "?"
                self.doc.problems.append(
                    _RawProblem(
                        key_path,
                        f"duplicate key {key!r} (first at line {line})",
                        where=_mark(key_node.start_mark),
                    )
                )
                continue
            self.doc.positions[key_path] = _Pos(
                _mark(key_node.start_mark), _mark(value_node.start_mark)
            )
            result[key] = self._build(value_node, key_path)
        return result

    def _interpolate(self, text: str, path: Path) -> str:
        """Expand ``${NAME}`` from the environment; ``$${`` stands for a literal ``${``."""
        out: list[str] = []
        pos = 0
        used_env = False
        while (m := _ENV_TOKEN_RE.search(text, pos)) is not None:
            out.append(text[pos : m.start()])
            if m.group() == "$${":
                out.append("${")
                pos = m.end()
                continue
            close = text.find("}", m.end())
            if close < 0:
                self._env_problem(path, "unterminated '${': close it with '}', or write '$${'")
                out.append(text[m.start() :])
                pos = len(text)
                break
            name = text[m.end() : close]
            pos = close + 1
            if not _ENV_NAME_RE.match(name):
                # The name is not echoed: in a password, "${...}" may be part of the secret.
                self._env_problem(
                    path,
                    "invalid variable name in '${…}': letters, digits and '_', not starting "
                    "with a digit (write '$${' for a literal '${')",
                )
                continue
            value = self.environ.get(name)
            if value is None:
                self._env_problem(path, f"environment variable {name} is not set")
                continue
            used_env = True
            out.append(value)
        out.append(text[pos:])
        if used_env:
            self.doc.from_env.add(path)
        return "".join(out)

    def _env_problem(self, path: Path, message: str) -> None:
        self.doc.broken.add(path)
        self.doc.problems.append(_RawProblem(path, message))


# --------------------------------------------------------------------------- stage 2: models


def _one_or_many(value: Any) -> Any:
    """``repositories: team-a/app`` means ``[team-a/app]``; the same for targets and regexes."""
    return [value] if isinstance(value, str) else value


def _v_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as e:
        raise ValueError(f"invalid regex {_show(value)}: {e}") from None
    return value


def _v_tag(value: str) -> str:
    try:
        validate_tag(value)
    except InvalidReferenceError:
        raise ValueError(
            f"invalid tag {_show(value)}: up to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'"
        ) from None
    return value


def _v_semver(value: str) -> str:
    if not value.strip():
        raise ValueError("empty version range: write e.g. '>=1.0.0' or remove the key")
    # Imported here: only configs with a `semver:` filter pay for the import at start-up.
    import semantic_version

    try:
        semantic_version.NpmSpec(value)
    except ValueError:
        raise ValueError(
            f"invalid version range {_show(value)}: npm syntax, e.g. '>=1.2.0 <2', '^1.2', '~1.2.3'"
        ) from None
    return value


def _v_duration(value: Any) -> float:
    try:
        return parse_duration(value)
    except ValueError as e:
        if isinstance(value, str):
            raise ValueError(str(e).replace(repr(value), _show(value))) from None
        raise


def _v_duration_or_zero(value: Any) -> float:
    if value in ("0", "0s") or (type(value) in (int, float) and value == 0):
        return 0.0
    return _v_duration(value)


def _v_cron(value: str) -> str:
    # Imported here: only configs with a `schedule:` pay for the import at start-up.
    from croniter import croniter

    if not croniter.is_valid(value):
        raise ValueError(
            f"invalid cron expression {_show(value)}: five fields 'minute hour day month "
            "weekday', e.g. '*/10 * * * *', or @hourly/@daily"
        )
    return value


def _v_platform(value: str) -> str:
    if not _PLATFORM_RE.match(value):
        raise ValueError(
            f"invalid platform {_show(value)}: os/architecture[/variant] in lower case, "
            "e.g. linux/amd64, linux/arm/v7"
        )
    return value


def _glob_problem(pattern: str) -> str | None:
    if any(c in "*?" for c in pattern):
        for comp in pattern.split("/"):
            if "**" in comp and comp != "**":
                return "'**' must be a whole path component, e.g. 'team-a/**'"
    # Stand a letter in for each glob so the rest is checked as an ordinary repository name.
    concrete = "/".join("x" if c == "**" else c for c in pattern.split("/"))
    concrete = concrete.replace("*", "x").replace("?", "x")
    try:
        validate_repository(concrete)
    except InvalidReferenceError:
        return (
            "lower-case letters, digits and separators [._-] in components joined by '/'; "
            "globs '*', '?', '**'"
        )
    return None


def _v_repository(value: str) -> str:
    problem = _glob_problem(value)
    if problem:
        raise ValueError(f"invalid repository {_show(value)}: {problem}")
    return value


def _v_prefix(value: str) -> str:
    stripped = value.rstrip("/")  # the trailing "/" is optional; a leading one is an error
    if not stripped:
        return value
    try:
        validate_repository(stripped)
    except InvalidReferenceError:
        raise ValueError(
            f"invalid target_prefix {_show(value)}: repository path components, e.g. 'mirror/'"
        ) from None
    return value


def _v_backup(value: str) -> str:
    problem = backup_template_problem(value)
    if problem:
        raise ValueError(f"backup template {_show(value)}: {problem}")
    return value


def _v_media_type(value: str) -> str:
    if not _MEDIA_TYPE_RE.match(value):
        raise ValueError(
            f"invalid artifact type {_show(value)}: a media type such as "
            "'application/vnd.dev.sigstore.bundle.v0.3+json'"
        )
    return value


def _v_url(value: str) -> str:
    expected = (
        "write http://HOST[:PORT], https://HOST[:PORT], HOST[:PORT], oci:DIRECTORY or "
        "oci-archive:FILE"
    )
    layout = layout_url(value)
    if layout is not None:
        if not layout[1].strip():
            raise ValueError(f"{layout[0]}: needs a path, e.g. {layout[0]}:/srv/images")
        return value
    rest = value
    if "://" in value:
        scheme, _, rest = value.partition("://")
        if scheme not in ("http", "https"):
            raise ValueError(f"url scheme must be http or https: {expected}")
    authority = rest[:-1] if rest.endswith("/") else rest
    if "@" in authority:
        # Not echoed: credentials in a URL would end up in logs; they belong in password.
        raise ValueError("url must not contain credentials: use username and password")
    if any(c in authority for c in "/?#"):
        raise ValueError(f"url must not have a path or query: {expected}")
    m = _HOST_PORT_RE.match(authority)
    if m is None or (m.group(1) is not None and not 0 < int(m.group(1)) < 65536):
        raise ValueError(f"invalid url {_show(value)}: {expected}")
    return value


def _v_proxy(value: SecretStr) -> SecretStr:
    # A SecretStr: the URL may carry the proxy's password; parse errors never repeat it.
    parse_proxy_url(value.get_secret_value())
    return value


def _v_reserve(value: Any) -> QuotaReserve:
    """``quota_reserve``: a whole number of pulls, or a percentage of the budget (``10%``)."""
    expected = "a number of pulls (e.g. 20) or a percentage of the budget (e.g. '10%')"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return QuotaReserve(float(value), percent=False)
    if isinstance(value, str):
        text = value.strip()
        number = text.removesuffix("%").strip()
        try:
            amount = float(number)
        except ValueError:
            raise ValueError(f"invalid quota_reserve {_show(value)}: {expected}") from None
        if text.endswith("%") and 0 <= amount < 100:
            return QuotaReserve(amount, percent=True)
        if not text.endswith("%") and amount >= 0 and amount.is_integer():
            return QuotaReserve(amount, percent=False)
        raise ValueError(
            f"invalid quota_reserve {_show(value)}: a percentage from 0% to below 100%, or a "
            "whole number of pulls"
        )
    raise ValueError(f"invalid quota_reserve: expected {expected}, got {_kind(value)}")


def _v_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    ok = bool(sep and host) and port.isdigit() and int(port) < 65536
    # The host may carry no port of its own; an IPv6 address needs brackets.
    ok = ok and _HOST_PORT_RE.match(host) is not None and (host.startswith("[") or ":" not in host)
    if not ok:
        raise ValueError(f"invalid listen address {_show(value)}: HOST:PORT, e.g. 127.0.0.1:9090")
    return value


def _v_etcd_endpoint(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(
            f"invalid etcd endpoint {_show(value)}: a URL, http://HOST:PORT or https://HOST:PORT"
        )
    return _v_url(value)


def _v_lease_ttl(value: Any) -> float:
    seconds = _v_duration(value)
    if seconds < MIN_LEASE_TTL:
        # A lease is renewed every third of its TTL; below 2 s one slow renewal fences the
        # replica and the cluster churns.
        raise ValueError(f"lease_ttl must be at least {MIN_LEASE_TTL:g}s")
    # etcd grants leases in whole seconds (LeaseGrantRequest.TTL is an int64 of seconds).
    return float(math.ceil(seconds))


def _v_key_prefix(value: str) -> str:
    if not value.startswith("/") or not value.endswith("/") or "//" in value:
        raise ValueError(
            f"invalid prefix {_show(value)}: an etcd key path that starts and ends with '/', "
            "e.g. /syncd/ or /teams/a/syncd/"
        )
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"invalid prefix {_show(value)}: no spaces or control characters")
    return value


def _v_member_name(value: str) -> str:
    if not RULE_NAME_RE.match(value) or len(value) > 253:
        raise ValueError(
            f"invalid replica name {_show(value)}: letters, digits and [._-], starting with a "
            "letter or digit (a host name or pod name fits)"
        )
    return value


def _unique(values: list[str]) -> list[str]:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise ValueError(f"{_show(v)} is listed twice")
        seen.add(v)
    return values


# Keys of a registry that mean nothing for an OCI image layout.
_NOT_FOR_LAYOUTS = (
    "username",
    "password",
    "password_file",
    "docker_config",
    "ca_file",
    "tls_verify",
    "client_cert",
    "client_key",
    "allow_insecure_auth",
    "proxy",
)

NonEmpty = Annotated[str, Field(min_length=1)]
Regex = Annotated[str, AfterValidator(_v_regex)]
# ``json_schema_input_type`` says what the YAML may hold before a BeforeValidator converts
# it, so ``syncd schema`` describes the file an operator writes, not the parsed value.
OneOrMany = BeforeValidator(_one_or_many, json_schema_input_type=str | list[str])
RegexList = Annotated[list[Regex], OneOrMany]
Duration = Annotated[float, BeforeValidator(_v_duration, json_schema_input_type=float | str)]
# A duration where 0 means "off" (a rule can switch off a default that way).
DurationOrZero = Annotated[
    float, BeforeValidator(_v_duration_or_zero, json_schema_input_type=float | str)
]
Cron = Annotated[str, AfterValidator(_v_cron)]
Count = Annotated[int, Field(ge=1)]
# For the JSON Schema: a whole number of pulls, or a string such as "10%".
Reserve = Annotated[
    QuotaReserve,
    PlainValidator(_v_reserve, json_schema_input_type=Annotated[int, Field(ge=0)] | str),
]


class _Model(BaseModel):
    # hide_input_in_errors: even a ValidationError printed by accident shows no values.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, hide_input_in_errors=True)


class AccountModel(_Model):
    """``registries.<name>.credentials[i]``: one account of several."""

    username: NonEmpty
    password: Annotated[SecretStr, Field(min_length=1)] | None = None
    password_file: NonEmpty | None = None


class RegistryModel(_Model):
    """``registries.<name>``."""

    url: Annotated[NonEmpty, AfterValidator(_v_url)]
    username: NonEmpty | None = None
    password: Annotated[SecretStr, Field(min_length=1)] | None = None
    password_file: NonEmpty | None = None
    docker_config: bool = False
    ca_file: NonEmpty | None = None
    tls_verify: bool = True
    client_cert: NonEmpty | None = None
    client_key: NonEmpty | None = None
    max_concurrency: Count = DEFAULT_MAX_CONCURRENCY
    allow_insecure_auth: bool = False
    proxy: Annotated[SecretStr, Field(min_length=1), AfterValidator(_v_proxy)] | None = None
    credentials: Annotated[list[AccountModel], Field(min_length=1)] | None = None
    quota_reserve: Reserve | None = None
    requests_per_second: Annotated[float, Field(gt=0)] | None = None
    max_retry_wait: Duration | None = None


class DefaultsModel(_Model):
    """``defaults``: merged into every rule that does not set the key itself."""

    interval: Duration | None = None
    schedule: Cron | None = None
    retries: Count | None = None
    concurrency: Count | None = None
    target_recheck: DurationOrZero | None = None
    # Applies to registries (not rules): the default of their own max_retry_wait.
    max_retry_wait: Duration | None = None


class TagsModel(_Model):
    """``rules[].tags`` in mapping form (the list form becomes ``names``)."""

    names: Annotated[list[Annotated[str, AfterValidator(_v_tag)]], AfterValidator(_unique)] = []
    include: RegexList = []
    exclude: RegexList = []
    semver: Annotated[str, AfterValidator(_v_semver)] | None = None
    newest: Count | None = None


class RuleModel(_Model):
    """One entry of ``rules``."""

    name: NonEmpty
    source: NonEmpty
    targets: Annotated[list[NonEmpty], OneOrMany, Field(min_length=1), AfterValidator(_unique)]
    repositories: Annotated[
        list[Annotated[str, AfterValidator(_v_repository)]],
        OneOrMany,
        Field(min_length=1),
        AfterValidator(_unique),
    ]
    tags: TagsModel | None = None
    platforms: Annotated[
        list[Annotated[str, AfterValidator(_v_platform)]],
        OneOrMany,
        AfterValidator(_unique),
    ] = []
    target_prefix: Annotated[str, AfterValidator(_v_prefix)] = ""
    overwrite: bool = True
    backup: Annotated[NonEmpty, AfterValidator(_v_backup)] | None = None
    immutable_tags: RegexList = []
    referrers: bool = True
    referrers_types: Annotated[list[Annotated[str, AfterValidator(_v_media_type)]], OneOrMany] = []
    require_signature: bool = False
    interval: Duration | None = None
    schedule: Cron | None = None
    retries: Count | None = None
    concurrency: Count | None = None
    target_recheck: DurationOrZero | None = None
    prune: Literal["deleted", "unselected"] | None = None
    protect: RegexList = []
    max_deletions: Count = DEFAULT_MAX_DELETIONS

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not RULE_NAME_RE.match(value):
            raise ValueError(
                f"invalid rule name {_show(value)}: letters, digits and [._-], "
                "starting with a letter or digit"
            )
        return value

    @field_validator(
        "tags", mode="before", json_schema_input_type=list[str] | str | TagsModel | None
    )
    @classmethod
    def _tag_list(cls, value: Any) -> Any:
        # "tags: [v1, latest]" is an explicit list of tags.
        if isinstance(value, list | str):
            return {"names": _one_or_many(value)}
        return value


class ServerModel(_Model):
    """``server``."""

    listen: Annotated[NonEmpty, AfterValidator(_v_listen)] | None = None
    webhook_token: Annotated[SecretStr, Field(min_length=1)] | None = None


class StateModel(_Model):
    """``state``: the file of the state store, or ``none``."""

    path: NonEmpty | None = None


class EtcdModel(_Model):
    """``cluster.etcd``."""

    endpoints: Annotated[
        list[Annotated[NonEmpty, AfterValidator(_v_etcd_endpoint)]],
        BeforeValidator(_one_or_many),
        Field(min_length=1),
        AfterValidator(_unique),
    ]
    ca_file: NonEmpty | None = None
    client_cert: NonEmpty | None = None
    client_key: NonEmpty | None = None
    username: NonEmpty | None = None
    password: Annotated[SecretStr, Field(min_length=1)] | None = None
    password_file: NonEmpty | None = None


class ClusterModel(_Model):
    """``cluster``."""

    etcd: EtcdModel
    name: Annotated[NonEmpty, AfterValidator(_v_member_name)] | None = None
    prefix: Annotated[NonEmpty, AfterValidator(_v_key_prefix)] = DEFAULT_CLUSTER_PREFIX
    lease_ttl: Annotated[
        float, BeforeValidator(_v_lease_ttl, json_schema_input_type=float | str)
    ] = DEFAULT_LEASE_TTL
    expected_members: Count | None = None


class ConfigModel(_Model):
    """The whole file."""

    registries: dict[str, RegistryModel]
    defaults: DefaultsModel | None = None
    rules: Annotated[list[RuleModel], Field(min_length=1)]
    server: ServerModel | None = None
    state: StateModel | None = None
    cluster: ClusterModel | None = None


def _model_at(loc: Path) -> type[BaseModel] | None:
    """The model that validates the mapping at ``loc`` (for the keys a did-you-mean offers)."""
    match loc:
        case ():
            return ConfigModel
        case ("registries", _):
            return RegistryModel
        case ("registries", _, "credentials", int()):
            return AccountModel
        case ("defaults",):
            return DefaultsModel
        case ("server",):
            return ServerModel
        case ("state",):
            return StateModel
        case ("cluster",):
            return ClusterModel
        case ("cluster", "etcd"):
            return EtcdModel
        case ("rules", int()):
            return RuleModel
        case ("rules", int(), "tags"):
            return TagsModel
    return None


def _unknown_key_message(loc: Path) -> str:
    key = str(loc[-1])
    model = _model_at(loc[:-1])
    allowed = sorted(model.model_fields) if model else []
    if model is TagsModel:
        allowed.remove("names")  # the list form is how users write names
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f"unknown key {key!r} (did you mean {close[0]!r}?)"
    if allowed:
        return f"unknown key {key!r}; allowed here: {', '.join(allowed)}"
    return f"unknown key {key!r}"


def _error_message(err: ErrorDetails) -> str:
    kind = err["type"]
    loc = err["loc"]
    got = _kind(err.get("input"))
    ctx = err.get("ctx") or {}
    match kind:
        case "extra_forbidden":
            return _unknown_key_message(loc)
        case "missing":
            return f"required key {str(loc[-1])!r} is missing"
        case "string_type":
            hint = " (quote it)" if got in ("an integer", "a number", "a boolean") else ""
            return f"expected a string, got {got}{hint}"
        case "int_type" | "int_from_float":
            return f"expected an integer, got {got}"
        case "bool_type":
            return f"expected true or false, got {got}"
        case "float_type":
            return f"expected a number, got {got}"
        case "list_type":
            return f"expected a list, got {got}"
        case "dict_type" | "model_type" | "model_attributes_type":
            return f"expected a mapping of keys, got {got}"
        case "too_short" | "string_too_short":
            return "must not be empty"
        case "greater_than_equal":
            return f"must be at least {ctx.get('ge')}"
        case "greater_than":
            return f"must be more than {ctx.get('gt')}"
        case "value_error":
            return str(err["msg"]).removeprefix("Value error, ")
    return str(err["msg"])


# --------------------------------------------------------------------------- the loader


class _Loader:
    """One load: the document, its problems, and the checks that span the document."""

    def __init__(
        self, filename: str, base_dir: str, environ: Mapping[str, str], *, check_files: bool
    ) -> None:
        self.filename = filename
        self.check_files = check_files
        self.base_dir = base_dir
        self.environ = environ
        self.doc = _Document(data=None)
        self.problems: list[ConfigProblem] = []

    # -- problems ------------------------------------------------------------------

    def _locate(self, loc: Path) -> tuple[Path, str]:
        """The data path ``loc`` leads to and its display key.

        Segments the data does not have are skipped: ``names`` of a list-form ``tags``, the
        index pydantic gives a single-string ``repositories``. A missing key at the end is
        shown (``registries.dev.url``) but located at its mapping.
        """
        node: Any = self.doc.data
        path: Path = ()
        shown = ""
        for i, seg in enumerate(loc):
            in_dict = isinstance(node, dict) and isinstance(seg, str) and seg in node
            in_list = isinstance(node, list) and isinstance(seg, int) and 0 <= seg < len(node)
            if in_dict or in_list:
                node = node[seg]
            else:
                if isinstance(node, dict) and isinstance(seg, str) and i == len(loc) - 1:
                    shown += f".{seg}" if shown else seg
                continue
            path = (*path, seg)
            shown += f"[{seg}]" if isinstance(seg, int) else (f".{seg}" if shown else seg)
        return path, shown

    def add(
        self,
        path: Path,
        message: str,
        *,
        at_key: bool = False,
        shown: str = "",
        where: tuple[int, int] | None = None,
    ) -> None:
        """Record a problem at data path ``path``: at its value, or its key with ``at_key``;
        a path the document lacks is placed at its nearest ancestor."""
        pos = self.doc.positions.get(path)
        probe = path
        while pos is None and probe:
            probe = probe[:-1]
            pos = self.doc.positions.get(probe)
        if where is not None:
            line, column = where
        elif pos is None:
            line, column = 1, 1
        else:
            line, column = pos.key if (at_key and pos.key) else pos.value
        if any(p[: len(path)] == path for p in self.doc.from_env):
            message = re.sub(f"{_SHOW_START}[^{_SHOW_END}]*{_SHOW_END}", _FROM_ENV, message)
        message = message.replace(_SHOW_START, "").replace(_SHOW_END, "")
        key = shown or _display(path)
        self.problems.append(ConfigProblem(self.filename, line, column, key, message))

    # -- stages ----------------------------------------------------------------------

    def parse(self, text: str) -> bool:
        loader = _PositionLoader(text, self.environ)
        try:
            self.doc = loader.load_document()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line, column = _mark(mark) if mark else (1, 1)
            # Only the problem and context text: str(e) would quote the offending line of the
            # file, which may hold a password.
            parts = [p for p in (e.context, e.problem) if p]
            message = "YAML syntax error: " + ("; ".join(parts) or "cannot parse")
            if e.context_mark and e.problem_mark and e.context_mark.line != e.problem_mark.line:
                began = _mark(e.context_mark)
                message += f" (the construct began at line {began[0]}, column {began[1]})"
            self.problems.append(ConfigProblem(self.filename, line, column, "", message))
            return False
        except yaml.YAMLError as e:
            self.problems.append(
                ConfigProblem(self.filename, 1, 1, "", f"YAML error: {type(e).__name__}")
            )
            return False
        except (_TooLargeError, RecursionError):
            self.problems.append(
                ConfigProblem(
                    self.filename, 1, 1, "", "the document is too large or nested too deeply"
                )
            )
            return False
        finally:
            loader.dispose()
        for raw in self.doc.problems:
            self.add(raw.path, raw.message, at_key=raw.at_key, where=raw.where)
        data = self.doc.data
        if data is None:
            self.add((), "the file is empty: expected a mapping with registries and rules")
            return False
        if not isinstance(data, dict):
            self.add((), f"the top level must be a mapping (registries, rules…), got {_kind(data)}")
            return False
        return True

    def validate(self) -> ConfigModel | None:
        try:
            model = ConfigModel.model_validate(self.doc.data)
        except ValidationError as e:
            for err in e.errors(include_url=False):
                path, shown = self._locate(tuple(err["loc"]))
                if any(path[: len(b)] == b for b in self.doc.broken):
                    continue  # already reported: a missing variable or a bad ${…}
                self.add(
                    path, _error_message(err), at_key=err["type"] == "extra_forbidden", shown=shown
                )
            return None
        return model

    def cross_check(self) -> None:
        data: dict[str, Any] = self.doc.data
        registries = data.get("registries")
        names: list[str] = []
        if isinstance(registries, dict):
            names = list(registries)
            for name, reg in registries.items():
                self._check_registry(name, reg)
        defaults = data.get("defaults")
        if isinstance(defaults, dict):
            self._interval_and_schedule(("defaults",), defaults)
        cluster = data.get("cluster")
        if isinstance(cluster, dict) and isinstance(cluster.get("etcd"), dict):
            self._check_etcd(cluster["etcd"])
        rules = data.get("rules")
        if isinstance(rules, list):
            first_seen: dict[str, int] = {}
            for i, rule in enumerate(rules):
                if isinstance(rule, dict):
                    self._check_rule(i, rule, names, registries, first_seen)

    def _check_registry(self, name: str, reg: Any) -> None:
        path: Path = ("registries", name)
        if not REGISTRY_NAME_RE.match(name):
            self.add(
                path,
                f"invalid registry name {name!r}: lower-case letters, digits, '_' and '-', "
                "starting with a letter or digit",
                at_key=True,
            )
        if not isinstance(reg, dict):
            return
        if self._check_layout(path, reg):
            return
        if "password" in reg and "password_file" in reg:
            self.add(
                (*path, "password_file"),
                "set either password or password_file, not both",
                at_key=True,
            )
        if ("password" in reg or "password_file" in reg) and "username" not in reg:
            which = "password" if "password" in reg else "password_file"
            self.add((*path, which), "a password needs a username", at_key=True)
        if "client_key" in reg and "client_cert" not in reg:
            self.add((*path, "client_key"), "client_key needs client_cert", at_key=True)
        for key in ("password_file", "ca_file", "client_cert", "client_key"):
            self._check_file(path, reg, key)
        self._check_accounts(path, reg)

    def _check_accounts(self, path: Path, reg: dict[str, Any]) -> None:
        """``credentials``: instead of the single-account keys; each entry one secret."""
        accounts = reg.get("credentials")
        if not isinstance(accounts, list):
            return
        for key in ("username", "password", "password_file", "docker_config"):
            if key in reg:
                self.add(
                    (*path, key),
                    f"set either credentials (several accounts) or {key}, not both",
                    at_key=True,
                )
        for i, entry in enumerate(accounts):
            if not isinstance(entry, dict):
                continue
            where = (*path, "credentials", i)
            if "password" in entry and "password_file" in entry:
                self.add(
                    (*where, "password_file"),
                    "set either password or password_file, not both",
                    at_key=True,
                )
            elif "password" not in entry and "password_file" not in entry:
                self.add(where, "an account needs a password or a password_file")
            self._check_file(where, entry, "password_file")

    def _check_file(self, path: Path, section: dict[str, Any], key: str) -> None:
        value = section.get(key)
        if not self.check_files or not isinstance(value, str) or not value:
            return
        if (*path, key) in self.doc.broken:
            return
        full = self._resolve(value)
        if not os.path.isfile(full):
            self.add((*path, key), f"{key} {_show(value)} does not exist or is not a file")
        elif not os.access(full, os.R_OK):
            self.add((*path, key), f"{key} {_show(value)} is not readable")

    def _check_layout(self, path: Path, reg: dict[str, Any]) -> bool:
        """A layout url: no credential or TLS keys; an archive must exist. True if a layout."""
        url = reg.get("url")
        layout = layout_url(url) if isinstance(url, str) else None
        if layout is None:
            return False
        kind, where = layout
        for key in _NOT_FOR_LAYOUTS:
            if key in reg:
                self.add(
                    (*path, key),
                    f"{key} does not apply to an OCI image layout ({kind}:): a layout is read "
                    "from and written to the file system, with no credentials or TLS",
                    at_key=True,
                )
        if not self.check_files or not where.strip() or (*path, "url") in self.doc.broken:
            return True
        full = self._resolve(where)
        if kind == "oci-archive":
            if not os.path.isfile(full):
                self.add(
                    (*path, "url"), f"oci-archive {_show(where)} does not exist or is not a file"
                )
            elif not os.access(full, os.R_OK):
                self.add((*path, "url"), f"oci-archive {_show(where)} is not readable")
        elif os.path.exists(full) and not os.path.isdir(full):
            self.add((*path, "url"), f"oci: {_show(where)} exists and is not a directory")
        return True

    def _check_etcd(self, etcd: dict[str, Any]) -> None:
        path: Path = ("cluster", "etcd")
        if "password" in etcd and "password_file" in etcd:
            self.add(
                (*path, "password_file"),
                "set either password or password_file, not both",
                at_key=True,
            )
        if ("password" in etcd or "password_file" in etcd) and "username" not in etcd:
            which = "password" if "password" in etcd else "password_file"
            self.add((*path, which), "a password needs a username", at_key=True)
        if "username" in etcd and not ("password" in etcd or "password_file" in etcd):
            self.add((*path, "username"), "username needs password or password_file", at_key=True)
        if "client_key" in etcd and "client_cert" not in etcd:
            self.add((*path, "client_key"), "client_key needs client_cert", at_key=True)
        if "client_cert" in etcd and "client_key" not in etcd:
            self.add((*path, "client_cert"), "client_cert needs client_key", at_key=True)
        endpoints = etcd.get("endpoints")
        listed = [endpoints] if isinstance(endpoints, str) else endpoints
        if isinstance(listed, list):
            schemes = {e.partition("://")[0] for e in listed if isinstance(e, str) and "://" in e}
            if len(schemes) > 1:
                self.add(
                    (*path, "endpoints"), "mix of http:// and https:// endpoints: use one scheme"
                )
            tls_keys = [k for k in ("ca_file", "client_cert") if k in etcd]
            if schemes == {"http"} and tls_keys:
                self.add(
                    (*path, tls_keys[0]),
                    f"{tls_keys[0]} needs https:// endpoints",
                    at_key=True,
                )
        for key in ("password_file", "ca_file", "client_cert", "client_key"):
            self._check_file(path, etcd, key)

    def _interval_and_schedule(self, path: Path, section: dict[str, Any]) -> None:
        if "interval" in section and "schedule" in section:
            self.add(
                (*path, "schedule"),
                "set either interval or schedule, not both",
                at_key=True,
            )

    def _check_rule(
        self,
        i: int,
        rule: dict[str, Any],
        names: list[str],
        registries: Any,
        first_seen: dict[str, int],
    ) -> None:
        path: Path = ("rules", i)
        self._interval_and_schedule(path, rule)
        name = rule.get("name")
        if isinstance(name, str):
            if name in first_seen:
                line = self.doc.positions[("rules", first_seen[name], "name")].value[0]
                self.add((*path, "name"), f"duplicate rule name {name!r} (first at line {line})")
            else:
                first_seen[name] = i
        source = rule.get("source")
        if isinstance(source, str) and source and isinstance(registries, dict):
            self._known_registry((*path, "source"), source, names)
            self._no_catalog(path, rule, registries.get(source), source)
        targets = rule.get("targets")
        target_paths: list[tuple[Path, str]] = []
        if isinstance(targets, str):
            target_paths = [((*path, "targets"), targets)]
        elif isinstance(targets, list):
            target_paths = [((*path, "targets", j), t) for j, t in enumerate(targets)]
        prefix = rule.get("target_prefix", "")
        prefix = prefix if isinstance(prefix, str) else ""
        for tpath, target in target_paths:
            if not isinstance(target, str) or not target:
                continue
            if isinstance(registries, dict):
                self._known_registry(tpath, target, names)
                self._writable_target(tpath, target, registries)
            if not isinstance(source, str) or not self._same_registry(registries, source, target):
                continue
            if not prefix.strip("/"):
                same = (
                    "is the rule's source" if target == source else "has the same url as the source"
                )
                self.add(
                    tpath,
                    f"target {target!r} {same} and target_prefix is empty: every repository "
                    "would be copied onto itself",
                )
            else:
                self._copies_of_copies(path, rule, target, prefix)

    def _writable_target(self, path: Path, target: str, registries: dict[str, Any]) -> None:
        reg = registries.get(target)
        url = reg.get("url") if isinstance(reg, dict) else None
        layout = layout_url(url) if isinstance(url, str) else None
        if layout is not None and layout[0] == "oci-archive":
            self.add(
                path,
                f"registry {target!r} is an oci-archive, which syncd only reads: it can be a "
                "source, not a target (write to an oci: directory instead)",
            )

    def _no_catalog(self, path: Path, rule: dict[str, Any], reg: Any, source: str) -> None:
        """A glob needs the source's catalog. Docker Hub has none (known without asking);
        other registries without one are found out by ``plan``/``once``."""
        url = reg.get("url") if isinstance(reg, dict) else None
        if not isinstance(url, str) or not is_docker_hub(split_origin(url)[1]):
            return
        repos = rule.get("repositories")
        patterns = [repos] if isinstance(repos, str) else repos if isinstance(repos, list) else []
        for j, pattern in enumerate(patterns):
            if isinstance(pattern, str) and is_glob(pattern):
                where = (
                    (*path, "repositories", j)
                    if isinstance(repos, list)
                    else (*path, "repositories")
                )
                self.add(
                    where,
                    f"registry {source!r} is Docker Hub, which does not list its repositories "
                    f"(no catalog): {_show(pattern)} cannot be expanded; list the "
                    "repositories by name",
                )

    def _known_registry(self, path: Path, name: str, names: list[str]) -> None:
        if name in names:
            return
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        defined = f"; defined: {', '.join(names)}" if names and not close else ""
        self.add(path, f"registry {name!r} is not defined under registries{hint}{defined}")

    def _same_registry(self, registries: Any, a: str, b: str) -> bool:
        if a == b:
            return True
        if not isinstance(registries, dict):
            return False
        urls = []
        for name in (a, b):
            reg = registries.get(name)
            url = reg.get("url") if isinstance(reg, dict) else None
            if not isinstance(url, str):
                return False
            urls.append(RegistryConfig(name=name, url=url).base_url)
        return urls[0] == urls[1]

    def _copies_of_copies(self, path: Path, rule: dict[str, Any], target: str, prefix: str) -> None:
        """Same registry with a prefix: a glob that also matches the copies would copy them
        again on every pass (``**`` with ``mirror/`` grows mirror/mirror/…)."""
        repos = rule.get("repositories")
        patterns = [repos] if isinstance(repos, str) else repos if isinstance(repos, list) else []
        patterns = [p for p in patterns if isinstance(p, str)]
        probe = RuleConfig(name="", source="", targets=(), repositories=(), target_prefix=prefix)
        for j, pattern in enumerate(patterns):
            if not is_glob(pattern) or _glob_problem(pattern):
                continue
            concrete = "/".join("x" if c == "**" else c for c in pattern.split("/"))
            copy = target_repository(probe, concrete.replace("*", "x").replace("?", "x"))
            if any(repository_matches(p, copy) for p in patterns):
                where = (
                    (*path, "repositories", j)
                    if isinstance(repos, list)
                    else (*path, "repositories")
                )
                self.add(
                    where,
                    f"at target {target!r} (the source registry) the copies under "
                    f"{_show(prefix)} match this pattern too, so every pass would copy the "
                    "copies again",
                )

    def _resolve(self, file: str) -> str:
        """Relative paths are read from the directory of the config file."""
        return os.path.normpath(os.path.join(self.base_dir, os.path.expanduser(file)))

    # -- result ------------------------------------------------------------------------

    def _layout_url(self, url: str) -> str:
        """A layout's path taken from the config file's directory, like every file."""
        layout = layout_url(url)
        return url if layout is None else f"{layout[0]}:{self._resolve(layout[1])}"

    def build(self, model: ConfigModel) -> Config:
        defaults = model.defaults or DefaultsModel()
        retry_wait = defaults.max_retry_wait or DEFAULT_MAX_RETRY_WAIT
        registries = {
            name: RegistryConfig(
                name=name,
                url=self._layout_url(reg.url),
                username=reg.username,
                password=Secret(reg.password.get_secret_value()) if reg.password else None,
                password_file=self._resolve(reg.password_file) if reg.password_file else None,
                docker_config=reg.docker_config,
                ca_file=self._resolve(reg.ca_file) if reg.ca_file else None,
                tls_verify=reg.tls_verify,
                client_cert=self._resolve(reg.client_cert) if reg.client_cert else None,
                client_key=self._resolve(reg.client_key) if reg.client_key else None,
                max_concurrency=reg.max_concurrency,
                allow_insecure_auth=reg.allow_insecure_auth,
                proxy=parse_proxy_url(
                    reg.proxy.get_secret_value(), origin=f"registries.{name}.proxy"
                )
                if reg.proxy
                else None,
                credentials=tuple(
                    AccountConfig(
                        a.username,
                        Secret(a.password.get_secret_value()) if a.password else None,
                        self._resolve(a.password_file) if a.password_file else None,
                    )
                    for a in reg.credentials or ()
                ),
                quota_reserve=reg.quota_reserve,
                requests_per_second=reg.requests_per_second,
                max_retry_wait=reg.max_retry_wait or retry_wait,
            )
            for name, reg in model.registries.items()
        }
        rules = tuple(_rule(r, defaults) for r in model.rules)
        server = model.server or ServerModel()
        cluster = self._cluster(model.cluster) if model.cluster else None
        return Config(
            path=self.filename,
            registries=registries,
            rules=rules,
            server=ServerConfig(
                listen=server.listen,
                webhook_token=Secret(server.webhook_token.get_secret_value())
                if server.webhook_token
                else None,
            ),
            state=StateConfig(path=self._state_path(model.state)),
            cluster=cluster,
        )

    def _cluster(self, c: ClusterModel) -> ClusterConfig:
        e = c.etcd

        def path(value: str | None) -> str | None:
            return self._resolve(value) if value else None

        return ClusterConfig(
            etcd=EtcdConfig(
                endpoints=tuple(u.rstrip("/") for u in e.endpoints),
                ca_file=path(e.ca_file),
                client_cert=path(e.client_cert),
                client_key=path(e.client_key),
                username=e.username,
                password=Secret(e.password.get_secret_value()) if e.password else None,
                password_file=path(e.password_file),
            ),
            # Every replica runs the same file, so the name that tells them apart defaults to
            # the host name (a pod's name under Kubernetes).
            name=c.name or socket.gethostname(),
            prefix=c.prefix,
            lease_ttl=c.lease_ttl,
            expected_members=c.expected_members,
        )

    def _state_path(self, state: StateModel | None) -> str | None:
        path = state.path if state else None
        if path is None:
            return default_state_path(self.environ)
        if path.lower() == "none":
            return None
        return self._resolve(path)


def _rule(r: RuleModel, d: DefaultsModel) -> RuleConfig:
    # A rule that names its own timing replaces the default timing as a whole: a rule's
    # interval beats a default schedule, and a rule's schedule beats a default interval.
    if r.interval is not None or r.schedule is not None:
        interval, schedule = r.interval, r.schedule
    else:
        interval, schedule = d.interval, d.schedule
    if interval is None:
        interval = d.interval if d.interval is not None else DEFAULT_INTERVAL
    tags = r.tags or TagsModel()
    return RuleConfig(
        name=r.name,
        source=r.source,
        targets=tuple(r.targets),
        repositories=tuple(r.repositories),
        tags=TagFilter(
            names=tuple(tags.names),
            include=tuple(tags.include),
            exclude=tuple(tags.exclude),
            semver=tags.semver,
            newest=tags.newest,
        ),
        platforms=tuple(r.platforms),
        target_prefix=r.target_prefix,
        overwrite=r.overwrite,
        backup=r.backup,
        immutable_tags=tuple(r.immutable_tags),
        referrers=r.referrers,
        referrers_types=tuple(r.referrers_types),
        require_signature=r.require_signature,
        interval=interval,
        schedule=schedule,
        retries=r.retries if r.retries is not None else d.retries or DEFAULT_RETRIES,
        concurrency=(
            r.concurrency if r.concurrency is not None else d.concurrency or DEFAULT_CONCURRENCY
        ),
        target_recheck=(
            r.target_recheck if r.target_recheck is not None else d.target_recheck or 0.0
        ),
        prune=r.prune,
        protect=tuple(r.protect),
        max_deletions=r.max_deletions,
    )


def _display(path: Path) -> str:
    shown = ""
    for seg in path:
        shown += f"[{seg}]" if isinstance(seg, int) else (f".{seg}" if shown else seg)
    return shown


def _load(
    text: str,
    filename: str,
    base_dir: str,
    environ: Mapping[str, str] | None,
    check_files: bool,
) -> Config:
    env = os.environ if environ is None else environ
    loader = _Loader(filename, base_dir, env, check_files=check_files)
    model = None
    if loader.parse(text):
        model = loader.validate()
        loader.cross_check()
    if loader.problems or model is None:
        problems = sorted(loader.problems, key=lambda p: (p.line, p.column))
        raise ConfigError(problems)
    return loader.build(model)


def load_config_text(
    text: str,
    *,
    filename: str = "<string>",
    environ: Mapping[str, str] | None = None,
    check_files: bool = True,
) -> Config:
    """Validate config ``text`` as if read from ``filename``; relative paths in it are taken
    from the current directory. Raises ``ConfigError`` with every problem found."""
    return _load(text, filename, os.getcwd(), environ, check_files)


def load_config(
    path: str | os.PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
    check_files: bool = True,
) -> Config:
    """Read, interpolate and validate the config file at ``path``.

    ``environ`` (default ``os.environ``) supplies ``${VAR}``. Files the config names
    (``password_file``, ``ca_file``, ``client_cert``, ``client_key``; relative paths are taken
    from the config file's directory) must exist and be readable unless ``check_files`` is
    false, which is for checking a config meant for another machine. Raises ``ConfigError``
    carrying every problem, each with file, line, column and key path; a file that cannot be
    read is one problem at 1:1.
    """
    filename = os.fspath(path)
    try:
        with open(filename, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ConfigError([ConfigProblem(filename, 1, 1, "", f"cannot read: {reason}")]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(
            [ConfigProblem(filename, 1, 1, "", f"larger than {MAX_FILE_BYTES} bytes")]
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError([ConfigProblem(filename, line, 1, "", "not UTF-8 text")]) from None
    base_dir = os.path.dirname(os.path.abspath(filename))
    return _load(text, filename, base_dir, environ, check_files)
