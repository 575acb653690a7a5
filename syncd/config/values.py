"""The value types of the config file: what each kind of key accepts and how it reads it.

``syncd.config.schema`` declares the keys with these types; each check raises ``ValueError``
with a message the loader shows at the key's file:line:column. Values a message echoes are
wrapped by ``show`` so the loader can replace them when they came from the environment (or
drop the marks otherwise); secrets are never echoed at all.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, PlainValidator, Strict, ValidationInfo

from syncd.durations import parse_duration
from syncd.errors import InvalidReferenceError
from syncd.proxy import ProxyURL, parse_proxy_url
from syncd.reference import validate_repository, validate_tag
from syncd.rules import backup_template_problem
from syncd.secret import Secret

REGISTRY_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
RULE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PLATFORM_RE = re.compile(r"^[a-z0-9_.-]+/[a-z0-9_.-]+(?:/[a-z0-9_.-]+)?$")
_MEDIA_TYPE_RE = re.compile(r"^[A-Za-z0-9][\w.+-]*/[A-Za-z0-9][\w.+-]*$")
_HOST_PORT_RE = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::(\d{1,5}))?$"
)

# Values a validator echoes are wrapped in these marks; when the problem is rendered they are
# dropped, or the whole value is replaced if it came from the environment.
SHOW_START, SHOW_END = "\x00", "\x01"
FROM_ENV = "(value from the environment)"


DEFAULT_MAX_CONCURRENCY = 8
DEFAULT_CLUSTER_PREFIX = "/syncd/"
DEFAULT_LEASE_TTL = 10.0
MIN_LEASE_TTL = 2.0
# ``url`` prefixes of OCI image layouts: a directory of layouts (one per repository) and a
# tar archive of one layout (read only). Longest first: ``oci-archive:`` starts with ``oci``.
LAYOUT_SCHEMES = ("oci-archive", "oci")


@dataclass(frozen=True, slots=True)
class QuotaReserve:
    """``quota_reserve``: pulls kept back from a registry's budget, a count or a percentage."""

    amount: float = 10.0
    percent: bool = True

    def __str__(self) -> str:
        return f"{self.amount:g}%" if self.percent else f"{self.amount:g}"


def layout_url(url: str) -> tuple[str, str] | None:
    """``("oci", PATH)`` or ``("oci-archive", FILE)`` for a layout url, else None."""
    for kind in LAYOUT_SCHEMES:
        if url.startswith(f"{kind}:") and not url.startswith(f"{kind}://"):
            return kind, url[len(kind) + 1 :]
    return None


class EnvText(str):
    """A plain (unquoted) scalar the loader built from ``${VAR}``: a number or boolean key
    reads it as YAML would have read the same text written in the file."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class LoadContext:
    """What validation needs beyond the document (pydantic's validation context): paths in
    the file are taken from ``base_dir``; ``state_path`` and ``host_name`` are the defaults
    the environment gives. Absent (values built in code), values are taken as they are."""

    filename: str
    base_dir: str
    state_path: str
    host_name: str


def context_of(info: ValidationInfo) -> LoadContext | None:
    ctx = info.context
    return ctx if isinstance(ctx, LoadContext) else None


def show(value: str) -> str:
    return f"{SHOW_START}{value!r}{SHOW_END}"


def kind_of(value: object) -> str:
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


def _one_or_many(value: Any) -> Any:
    """``repositories: team-a/app`` means ``[team-a/app]``; the same for targets and regexes."""
    return [value] if isinstance(value, str) else value


def _v_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as e:
        raise ValueError(f"invalid regex {show(value)}: {e}") from None
    return value


def _v_tag(value: str) -> str:
    try:
        validate_tag(value)
    except InvalidReferenceError:
        raise ValueError(
            f"invalid tag {show(value)}: up to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'"
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
            f"invalid version range {show(value)}: npm syntax, e.g. '>=1.2.0 <2', '^1.2', '~1.2.3'"
        ) from None
    return value


def _v_duration(value: Any) -> float:
    try:
        return parse_duration(value)
    except ValueError as e:
        if isinstance(value, str):
            raise ValueError(str(e).replace(repr(value), show(value))) from None
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
            f"invalid cron expression {show(value)}: five fields 'minute hour day month "
            "weekday', e.g. '*/10 * * * *', or @hourly/@daily"
        )
    return value


def _v_platform(value: str) -> str:
    if not _PLATFORM_RE.match(value):
        raise ValueError(
            f"invalid platform {show(value)}: os/architecture[/variant] in lower case, "
            "e.g. linux/amd64, linux/arm/v7"
        )
    return value


def glob_problem(pattern: str) -> str | None:
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
    problem = glob_problem(value)
    if problem:
        raise ValueError(f"invalid repository {show(value)}: {problem}")
    return value


def _v_prefix(value: str) -> str:
    stripped = value.rstrip("/")  # the trailing "/" is optional; a leading one is an error
    if not stripped:
        return value
    try:
        validate_repository(stripped)
    except InvalidReferenceError:
        raise ValueError(
            f"invalid target_prefix {show(value)}: repository path components, e.g. 'mirror/'"
        ) from None
    return value


def _v_backup(value: str) -> str:
    problem = backup_template_problem(value)
    if problem:
        raise ValueError(f"backup template {show(value)}: {problem}")
    return value


def _v_media_type(value: str) -> str:
    if not _MEDIA_TYPE_RE.match(value):
        raise ValueError(
            f"invalid artifact type {show(value)}: a media type such as "
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
        raise ValueError(f"invalid url {show(value)}: {expected}")
    return value


def _v_proxy(value: Any) -> ProxyURL:
    # The URL may carry the proxy's password: parse errors never repeat it.
    if isinstance(value, ProxyURL):
        return value
    return parse_proxy_url(_secret_text(value))


def _secret_text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(_expected_string(value))
    if not value:
        raise ValueError("must not be empty")
    return value


def _expected_string(value: Any) -> str:
    got = kind_of(value)
    hint = " (quote it)" if got in ("an integer", "a number", "a boolean") else ""
    return f"expected a string, got {got}{hint}"


def _v_secret(value: Any) -> Secret:
    return value if isinstance(value, Secret) else Secret(_secret_text(value))


def _v_reserve(value: Any) -> QuotaReserve:
    """``quota_reserve``: a whole number of pulls, or a percentage of the budget (``10%``)."""
    expected = "a number of pulls (e.g. 20) or a percentage of the budget (e.g. '10%')"
    if isinstance(value, QuotaReserve):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return QuotaReserve(float(value), percent=False)
    if isinstance(value, str):
        text = value.strip()
        number = text.removesuffix("%").strip()
        try:
            amount = float(number)
        except ValueError:
            raise ValueError(f"invalid quota_reserve {show(value)}: {expected}") from None
        if text.endswith("%") and 0 <= amount < 100:
            return QuotaReserve(amount, percent=True)
        if not text.endswith("%") and amount >= 0 and amount.is_integer():
            return QuotaReserve(amount, percent=False)
        raise ValueError(
            f"invalid quota_reserve {show(value)}: a percentage from 0% to below 100%, or a "
            "whole number of pulls"
        )
    raise ValueError(f"invalid quota_reserve: expected {expected}, got {kind_of(value)}")


def _v_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    ok = bool(sep and host) and port.isdigit() and int(port) < 65536
    # The host may carry no port of its own; an IPv6 address needs brackets.
    ok = ok and _HOST_PORT_RE.match(host) is not None and (host.startswith("[") or ":" not in host)
    if not ok:
        raise ValueError(f"invalid listen address {show(value)}: HOST:PORT, e.g. 127.0.0.1:9090")
    return value


def _v_etcd_endpoint(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(
            f"invalid etcd endpoint {show(value)}: a URL, http://HOST:PORT or https://HOST:PORT"
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
            f"invalid prefix {show(value)}: an etcd key path that starts and ends with '/', "
            "e.g. /syncd/ or /teams/a/syncd/"
        )
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"invalid prefix {show(value)}: no spaces or control characters")
    return value


def _v_rule_name(value: str) -> str:
    if not RULE_NAME_RE.match(value):
        raise ValueError(
            f"invalid rule name {show(value)}: letters, digits and [._-], "
            "starting with a letter or digit"
        )
    return value


def _v_member_name(value: str) -> str:
    if not RULE_NAME_RE.match(value) or len(value) > 253:
        raise ValueError(
            f"invalid replica name {show(value)}: letters, digits and [._-], starting with a "
            "letter or digit (a host name or pod name fits)"
        )
    return value


def _unique(values: tuple[str, ...]) -> tuple[str, ...]:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise ValueError(f"{show(v)} is listed twice")
        seen.add(v)
    return values


def _from_env(value: Any, kind: type[int] | type[float] | type[bool]) -> Any:
    """``${VAR}`` in a number or boolean key: the variable's text read as that type."""
    if not isinstance(value, EnvText):
        return value
    text = value.strip()
    if kind is bool:
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        expected = "true or false"
    else:
        try:
            number = int(text) if kind is int else float(text)
        except ValueError:
            number = None
        if number is not None and math.isfinite(number):
            return number
        expected = "an integer" if kind is int else "a number"
    # Not echoed: the variable may hold a secret that ended up under the wrong key.
    raise ValueError(f"expected {expected}, got a string that is not one {FROM_ENV}")


def _env_int(value: Any) -> Any:
    return _from_env(value, int)


def _env_float(value: Any) -> Any:
    return _from_env(value, float)


def _env_bool(value: Any) -> Any:
    return _from_env(value, bool)


def _v_file(value: str, info: ValidationInfo) -> str:
    """A file named in the config: relative to the config file's directory."""
    ctx = context_of(info)
    return value if ctx is None else resolve(ctx.base_dir, value)


def resolve(base_dir: str, file: str) -> str:
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(file)))


def _v_registry_url(value: str, info: ValidationInfo) -> str:
    """A layout's path is taken from the config file's directory, like every file."""
    ctx = context_of(info)
    layout = layout_url(value)
    if ctx is None or layout is None:
        return value
    return f"{layout[0]}:{resolve(ctx.base_dir, layout[1])}"


# Every scalar is strict (``password: 12345`` is an error, not the string "12345"); lists
# are read into tuples so the values stay immutable.
Text = Annotated[str, Strict()]
NonEmpty = Annotated[str, Strict(), Field(min_length=1)]
# For ``syncd schema``: a number or boolean key may also hold ``${NAME}`` (only).
EnvRef = Annotated[str, Field(pattern=r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$")]
Flag = Annotated[bool, Strict(), BeforeValidator(_env_bool, json_schema_input_type=bool | EnvRef)]
Positive = Annotated[
    float,
    Strict(),
    Field(gt=0),
    BeforeValidator(_env_float, json_schema_input_type=Annotated[float, Field(gt=0)] | EnvRef),
]
Count = Annotated[
    int,
    Strict(),
    Field(ge=1),
    BeforeValidator(_env_int, json_schema_input_type=Annotated[int, Field(ge=1)] | EnvRef),
]
File = Annotated[NonEmpty, AfterValidator(_v_file)]
Regex = Annotated[Text, AfterValidator(_v_regex)]
# ``json_schema_input_type`` says what the YAML may hold before a BeforeValidator converts
# it, so ``syncd schema`` describes the file an operator writes, not the parsed value.
OneOrMany = BeforeValidator(_one_or_many, json_schema_input_type=str | list[str])
Unique = AfterValidator(_unique)
RegexList = Annotated[tuple[Regex, ...], OneOrMany]
Duration = Annotated[float, BeforeValidator(_v_duration, json_schema_input_type=float | str)]
# A duration where 0 means "off" (a rule can switch off a default that way).
DurationOrZero = Annotated[
    float, BeforeValidator(_v_duration_or_zero, json_schema_input_type=float | str)
]
LeaseTTL = Annotated[float, BeforeValidator(_v_lease_ttl, json_schema_input_type=float | str)]
Cron = Annotated[Text, AfterValidator(_v_cron)]
SecretText = Annotated[
    Secret, PlainValidator(_v_secret, json_schema_input_type=Annotated[str, Field(min_length=1)])
]
Proxy = Annotated[
    ProxyURL, PlainValidator(_v_proxy, json_schema_input_type=Annotated[str, Field(min_length=1)])
]
# For the JSON Schema: a whole number of pulls, or a string such as "10%".
Reserve = Annotated[
    QuotaReserve,
    PlainValidator(_v_reserve, json_schema_input_type=Annotated[int, Field(ge=0)] | str),
]
RegistryURL = Annotated[NonEmpty, AfterValidator(_v_url), AfterValidator(_v_registry_url)]
Tag = Annotated[Text, AfterValidator(_v_tag)]
Repository = Annotated[Text, AfterValidator(_v_repository)]
Platform = Annotated[Text, AfterValidator(_v_platform)]
MediaType = Annotated[Text, AfterValidator(_v_media_type)]
Semver = Annotated[Text, AfterValidator(_v_semver)]
TargetPrefix = Annotated[Text, AfterValidator(_v_prefix)]
Backup = Annotated[NonEmpty, AfterValidator(_v_backup)]
Listen = Annotated[NonEmpty, AfterValidator(_v_listen)]
EtcdEndpoint = Annotated[NonEmpty, AfterValidator(_v_etcd_endpoint)]
KeyPrefix = Annotated[NonEmpty, AfterValidator(_v_key_prefix)]
MemberName = Annotated[NonEmpty, AfterValidator(_v_member_name)]
RuleName = Annotated[NonEmpty, AfterValidator(_v_rule_name)]
