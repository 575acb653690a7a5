"""What a rule selects: repository globs, tag filters, platforms, target names, backup tags.

Pure (L0): no I/O, no asyncio, no YAML. Everything here runs per repository or per tag on the
hot path of a pass, so compiled regexes and parsed ranges are cached by their pattern text.

Repository globs
    ``*`` matches within one path component (never ``/``), ``?`` one character of a component,
    and ``**`` written as a whole component matches any number of components, zero included:
    ``team-a/**`` matches ``team-a``, ``team-a/app`` and ``team-a/x/y``; ``**`` alone matches
    every repository. A pattern without glob characters names one repository exactly.

Tag filters, in this order
    1. ``names``: if given, only these tags (the list form ``tags: [a, b]``).
    2. ``include``: Python regexes, ``re.search``; any may match; none given keeps all.
    3. ``exclude``: regexes; none may match.
    4. ``semver``: an npm-style range over the tags that read as versions (see
       ``parse_version``); other tags are dropped; pre-releases only where the range admits
       them (``NpmSpec`` semantics: ``>=1.2.0-rc.0`` admits ``1.2.0-rc.1``, not ``1.3.0-rc.1``).
    5. ``newest: N``: the N highest versions among what is left; tags that do not read as
       versions are dropped, pre-releases count (exclude them with ``exclude`` or ``semver``).

    The result is in version order (lowest first) when ``semver`` or ``newest`` is set, else
    sorted by name.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING

from syncd.manifest import Platform
from syncd.reference import validate_tag

if TYPE_CHECKING:
    import semantic_version

    # Only in annotations: the config schema itself checks backup templates with this module.
    from syncd.config.schema import RuleConfig, TagFilter

MAX_TAG = 128

# A version tag: optional v/V, MAJOR.MINOR[.PATCH], optional -prerelease. Numbers without
# leading zeros, as semver says; so "v01.2.3" is not a version. A bare "1" is not one either:
# single numbers are far more often build numbers or dates (20240101) than releases.
# Tags cannot hold "+", so there is no build metadata to read.
_VERSION_RE = re.compile(
    r"^[vV]?(0|[1-9]\d*)\.(0|[1-9]\d*)(?:\.(0|[1-9]\d*))?"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?$"
)
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")
BACKUP_PLACEHOLDERS = ("tag", "date", "datetime")


def is_glob(pattern: str) -> bool:
    """Whether ``pattern`` has glob characters (``*``, ``?``) and so lists the catalog."""
    return "*" in pattern or "?" in pattern


@lru_cache(maxsize=1024)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    need_sep = False
    components = pattern.split("/")
    for i, comp in enumerate(components):
        last = i == len(components) - 1
        if comp == "**":
            if last:
                # "a/**" also matches "a" itself: the separator goes into the optional group.
                out.append("(?:/.*)?" if need_sep else ".*")
            else:
                out.append(("/" if need_sep else "") + "(?:.*/)?")
            need_sep = False
            continue
        if need_sep:
            out.append("/")
        for ch in comp:
            if ch == "*":
                out.append("[^/]*")
            elif ch == "?":
                out.append("[^/]")
            else:
                out.append(re.escape(ch))
        need_sep = True
    return re.compile("".join(out))


def repository_matches(pattern: str, repository: str) -> bool:
    """Whether ``repository`` is named by ``pattern`` (exact name or glob, see module doc)."""
    if not is_glob(pattern):
        return pattern == repository
    return _glob_regex(pattern).fullmatch(repository) is not None


def select_repositories(patterns: Sequence[str], catalog: Iterable[str]) -> list[str]:
    """The repositories a rule covers: exact names (even if absent from ``catalog``) plus the
    catalog entries any glob matches; sorted and without duplicates."""
    chosen = {p for p in patterns if not is_glob(p)}
    globs = [p for p in patterns if is_glob(p)]
    if globs:
        chosen.update(r for r in catalog if any(repository_matches(g, r) for g in globs))
    return sorted(chosen)


def rules_for_repository(rules: Sequence[RuleConfig], repository: str) -> list[RuleConfig]:
    """The rules whose source repository patterns name ``repository`` (for webhooks)."""
    return [r for r in rules if any(repository_matches(p, repository) for p in r.repositories)]


@lru_cache(maxsize=4096)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


@lru_cache(maxsize=256)
def _spec(expression: str) -> semantic_version.NpmSpec:
    import semantic_version  # only rules with version filters pay for it at start-up

    return semantic_version.NpmSpec(expression)


@lru_cache(maxsize=16384)
def parse_version(tag: str) -> semantic_version.Version | None:
    """The version a tag stands for, or None.

    ``1.2.3``, ``v1.2.3`` and ``1.2.3-rc.1`` read as themselves; ``1.2`` / ``v1.2`` read as
    ``1.2.0`` (npm-style coercion). Not versions: ``latest``, ``1``, ``v01.2.3`` (leading
    zero), ``1.2.3.4``, ``sha256-….sig``.
    """
    m = _VERSION_RE.match(tag)
    if m is None:
        return None
    import semantic_version  # only rules with version filters pay for it at start-up

    major, minor, patch, pre = m.groups()
    return semantic_version.Version(
        major=int(major),
        minor=int(minor),
        patch=int(patch or 0),
        prerelease=tuple(pre.split(".")) if pre else (),
    )


_Key = tuple[int, int, int, int, tuple[tuple[int, int, str], ...], str]


@lru_cache(maxsize=16384)
def _version_key(tag: str) -> _Key:
    """A plain tuple that sorts like semver precedence (``Version`` comparisons are slow).

    A release sorts after its pre-releases; pre-release identifiers compare numerically when
    numeric, numeric ones before alphanumeric ones, and a longer list after its own prefix.
    Two tags can be the same version (``v1.2.3``/``1.2.3``, ``1.2``/``1.2.0``): the name breaks
    the tie, so the order never depends on the order of the listing.
    """
    version = parse_version(tag)
    assert version is not None  # callers keep only tags that parse
    pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in version.prerelease)
    return version.major, version.minor, version.patch, 0 if pre else 1, pre, tag


@lru_cache(maxsize=65536)
def _in_range(expression: str, tag: str) -> bool:
    # Cached per (range, tag): a daemon filters the same listing pass after pass, and
    # NpmSpec.match costs about 12 µs against 0.2 µs from the cache (docs/benchmarks.md,
    # "Costs per call").
    return bool(_spec(expression).match(parse_version(tag)))


def _any_regex(patterns: tuple[str, ...]) -> Callable[[str], bool]:
    """Whether any of ``patterns`` is found in a tag; one pattern skips the ``any`` loop."""
    compiled = [_regex(p) for p in patterns]
    if len(compiled) == 1:
        search = compiled[0].search
        return lambda tag: search(tag) is not None
    return lambda tag: any(r.search(tag) for r in compiled)


def names_tag(f: TagFilter, tag: str) -> bool:
    """Whether the filter asks for ``tag`` itself: listed by name, or matched by an
    ``include`` pattern (not merely left through by the absence of one)."""
    return tag in f.names or any(_regex(p).search(tag) for p in f.include)


def select_tags(tags: Iterable[str], f: TagFilter) -> list[str]:
    """Apply ``f`` to a tag listing, in the order of the module docstring."""
    chosen = set(tags)
    if f.names:
        chosen &= set(f.names)
    if f.include:
        includes = _any_regex(f.include)
        chosen = {t for t in chosen if includes(t)}
    if f.exclude:
        excludes = _any_regex(f.exclude)
        chosen = {t for t in chosen if not excludes(t)}
    if f.semver is None and f.newest is None:
        return sorted(chosen)
    versioned = sorted((t for t in chosen if parse_version(t) is not None), key=_version_key)
    if f.semver is not None:
        expression = f.semver
        versioned = [t for t in versioned if _in_range(expression, t)]
    if f.newest is not None:
        versioned = versioned[-f.newest :] if f.newest > 0 else []
    return versioned


def target_repository(rule: RuleConfig, repository: str) -> str:
    """Where ``repository`` lands at the targets: ``target_prefix`` as leading path components.

    ``mirror/`` and ``mirror`` both give ``mirror/team-a/app``; no prefix keeps the name.
    """
    prefix = rule.target_prefix.strip("/")
    return f"{prefix}/{repository}" if prefix else repository


# An empty variant is what the platform's default variant is called when left out, as
# containerd's platform matcher normalises it (arm64 means arm64/v8, amd64 means amd64/v1).
_DEFAULT_VARIANT = {"arm64": "v8", "amd64": "v1"}


def _normal_variant(architecture: str, variant: str) -> str:
    return variant or _DEFAULT_VARIANT.get(architecture, "")


def platform_selected(platforms: Sequence[str], platform: Platform | None) -> bool:
    """Whether an index child of ``platform`` is kept by a rule's ``platforms``.

    No ``platforms`` keeps everything. ``linux/arm64`` keeps every arm64 variant; a spec with
    a variant (``linux/arm/v7``) needs that variant. A child without a platform is dropped by
    any filter: nothing says it is one of the named platforms.
    """
    if not platforms:
        return True
    if platform is None:
        return False
    for spec in platforms:
        parts = spec.split("/")
        if len(parts) < 2 or parts[0] != platform.os or parts[1] != platform.architecture:
            continue
        if len(parts) == 2:
            return True
        arch = platform.architecture
        if _normal_variant(arch, parts[2]) == _normal_variant(arch, platform.variant):
            return True
    return False


def is_immutable(rule: RuleConfig, tag: str) -> bool:
    """Whether ``tag`` matches one of the rule's ``immutable_tags`` regexes (``re.search``)."""
    return any(_regex(p).search(tag) for p in rule.immutable_tags)


def backup_tag(template: str, tag: str, now: datetime) -> str:
    """The tag that keeps a target tag's old manifest before it is moved.

    ``{tag}`` is the tag, ``{date}`` today in UTC as ``YYYYMMDD``, ``{datetime}`` the moment as
    ``YYYYMMDDTHHMMSSZ``. If the result would pass the 128 characters a tag may have, the
    ``{tag}`` part is shortened and ends in 8 hex digits of its sha256, so the fixed text of the
    template survives (a backup never lands on the tag itself) and two long tags that share a
    beginning keep apart backups. Raises ``InvalidReferenceError`` if the result is no tag.
    """
    when = now.astimezone(UTC) if now.tzinfo is not None else now.replace(tzinfo=UTC)
    values = {
        "date": when.strftime("%Y%m%d"),
        "datetime": when.strftime("%Y%m%dT%H%M%SZ"),
    }

    def render(tag_text: str) -> str:
        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name == "tag":
                return tag_text
            if name in values:
                return values[name]
            raise ValueError(f"unknown placeholder {{{name}}} in backup template {template!r}")

        return _PLACEHOLDER_RE.sub(sub, template)

    result = render(tag)
    if len(result) > MAX_TAG:
        uses = sum(1 for m in _PLACEHOLDER_RE.finditer(template) if m.group(1) == "tag")
        room = (MAX_TAG - len(render(""))) // uses if uses else 0
        digest = hashlib.sha256(tag.encode()).hexdigest()[:8]
        if room >= len(digest) + 2:
            result = render(f"{tag[: room - len(digest) - 1]}-{digest}")
    return validate_tag(result)


def backup_template_problem(template: str) -> str | None:
    """Why ``template`` cannot serve as a ``backup`` template, or None if it can.

    Used by the config loader: the template must name ``{tag}`` (else every tag of a repository
    would share one backup), use only known placeholders, and give a valid tag that differs
    from the original for a short and a maximal-length tag.
    """
    names = [m.group(1) for m in _PLACEHOLDER_RE.finditer(template)]
    unknown = [n for n in names if n not in BACKUP_PLACEHOLDERS]
    if unknown:
        known = ", ".join(f"{{{n}}}" for n in BACKUP_PLACEHOLDERS)
        return f"unknown placeholder {{{unknown[0]}}}: use {known}"
    if "tag" not in names:
        return "must contain {tag}, or every tag of a repository would share one backup"
    now = datetime(2024, 1, 31, 12, 0, 0, tzinfo=UTC)
    for sample, label in (("v1.2.3", "tag 'v1.2.3'"), ("x" * MAX_TAG, "a 128-character tag")):
        try:
            result = backup_tag(template, sample, now)
        except ValueError:
            return (
                f"gives no valid tag for {label}: a tag is up to 128 of [A-Za-z0-9_.-], "
                "not starting with '.' or '-'"
            )
        if result == sample:
            return "gives the tag itself: add a suffix or prefix, e.g. '{tag}-previous'"
    return None
