"""Table-driven tests of the pure rule logic: globs, tag filters, platforms, prefixes, backups."""

from __future__ import annotations

import ast
import pathlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
import semantic_version

from syncd import rules
from syncd.config.schema import RuleConfig, TagFilter
from syncd.errors import InvalidReferenceError
from syncd.manifest import Platform
from syncd.rules import (
    backup_tag,
    backup_template_problem,
    is_glob,
    is_immutable,
    parse_version,
    platform_selected,
    repository_matches,
    rules_for_repository,
    select_repositories,
    select_tags,
    target_repository,
)


def rule(**kw: object) -> RuleConfig:
    base: dict[str, object] = {
        "name": "r",
        "source": "src",
        "targets": ("dst",),
        "repositories": ("team-a/app",),
    }
    base.update(kw)
    return RuleConfig(**base)  # type: ignore[arg-type]


# ------------------------------------------------------------------ repository globs


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("team-a/app", False),
        ("team-a/*", True),
        ("**", True),
        ("app?", True),
        ("a.b_c-d/e", False),
    ],
)
def test_is_glob(pattern: str, expected: bool) -> None:
    assert is_glob(pattern) is expected


@pytest.mark.parametrize(
    ("pattern", "repository", "expected"),
    [
        # exact names match exactly, nothing else
        ("team-a/app", "team-a/app", True),
        ("team-a/app", "team-a/app2", False),
        ("team-a/app", "team-a", False),
        ("team-a/app", "x/team-a/app", False),
        # '.' in a name is literal, not a regex wildcard
        ("team.a/app", "teamxa/app", False),
        # * stays within one component
        ("team-a/*", "team-a/app", True),
        ("team-a/*", "team-a/x/y", False),
        ("team-a/*", "team-a", False),
        ("team-a/*", "team-b/app", False),
        ("*/app", "team-a/app", True),
        ("*/app", "a/b/app", False),
        ("team-*", "team-a", True),
        ("team-*", "team-a/app", False),
        ("*-app", "my-app", True),
        ("*", "app", True),
        ("*", "a/b", False),
        # ? is one character of a component
        ("app?", "app1", True),
        ("app?", "app", False),
        ("app?", "app12", False),
        ("a?b", "a/b", False),
        # ** as a whole component: any depth, zero included
        ("**", "app", True),
        ("**", "a/b/c/d", True),
        ("team-a/**", "team-a", True),
        ("team-a/**", "team-a/app", True),
        ("team-a/**", "team-a/x/y/z", True),
        ("team-a/**", "team-ab/app", False),
        ("team-a/**", "team-b/app", False),
        ("**/app", "app", True),
        ("**/app", "a/b/app", True),
        ("**/app", "a/b/app2", False),
        ("a/**/b", "a/b", True),
        ("a/**/b", "a/x/b", True),
        ("a/**/b", "a/x/y/b", True),
        ("a/**/b", "a/x/y/c", False),
        ("a/**/b", "ab", False),
        ("a/**/*/c", "a/x/c", True),
        ("a/**/*/c", "a/c", False),
    ],
)
def test_repository_matches(pattern: str, repository: str, expected: bool) -> None:
    assert repository_matches(pattern, repository) is expected


@pytest.mark.parametrize(
    ("patterns", "catalog", "expected"),
    [
        # exact names are kept even when the catalog does not list them
        (["team-a/app"], [], ["team-a/app"]),
        (["team-a/app"], ["other"], ["team-a/app"]),
        # globs resolve through the catalog only
        (
            ["team-a/*"],
            ["team-a/x", "team-a/y", "team-b/x", "team-a/x/deep"],
            ["team-a/x", "team-a/y"],
        ),
        (["team-a/*"], [], []),
        # sorted, no duplicates when a name is both exact and globbed
        (
            ["team-a/*", "team-a/b"],
            ["team-a/c", "team-a/b", "team-a/a"],
            ["team-a/a", "team-a/b", "team-a/c"],
        ),
        (["**"], ["z", "a/b", "m"], ["a/b", "m", "z"]),
        (["b", "a", "b"], [], ["a", "b"]),
        ([], ["a"], []),
    ],
)
def test_select_repositories(patterns: list[str], catalog: list[str], expected: list[str]) -> None:
    assert select_repositories(patterns, catalog) == expected


def test_select_repositories_takes_a_one_shot_iterator() -> None:
    assert select_repositories(["a/*"], iter(["a/1", "a/2"])) == ["a/1", "a/2"]


def test_rules_for_repository() -> None:
    r1 = rule(name="exact", repositories=("team-a/app",))
    r2 = rule(name="glob", repositories=("team-a/*",))
    r3 = rule(name="other", repositories=("team-b/**",))
    assert rules_for_repository([r1, r2, r3], "team-a/app") == [r1, r2]
    assert rules_for_repository([r1, r2, r3], "team-b/x/y") == [r3]
    assert rules_for_repository([r1, r2, r3], "team-c/app") == []


# ------------------------------------------------------------------ versions


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("1.2.3", "1.2.3"),
        ("v1.2.3", "1.2.3"),
        ("V1.2.3", "1.2.3"),
        ("0.0.0", "0.0.0"),
        ("1.2", "1.2.0"),
        ("v1.2", "1.2.0"),
        ("v1.2.3-rc1", "1.2.3-rc1"),
        ("1.2.3-rc.1", "1.2.3-rc.1"),
        ("1.2.3-alpha.beta.1", "1.2.3-alpha.beta.1"),
        ("10.20.30", "10.20.30"),
        # not versions
        ("latest", None),
        ("1", None),
        ("v1", None),
        ("20240101", None),
        ("v01.2.3", None),
        ("1.02.3", None),
        ("1.2.3.4", None),
        ("1.2.3-", None),
        ("1.2.3-rc.01", None),
        ("sha256-abc.sig", None),
        ("sha256-0123abcd.att", None),
        ("1.2.3_build", None),
        ("main-1.2.3", None),
        ("x" * 128, None),
    ],
)
def test_parse_version(tag: str, expected: str | None) -> None:
    version = parse_version(tag)
    if expected is None:
        assert version is None
    else:
        assert version == semantic_version.Version(expected)


TAGS = [
    "latest",
    "v1.2.3",
    "1.2.4",
    "v1.2.3-rc1",
    "1.3.0-rc.1",
    "1.2",
    "v01.2.3",
    "sha256-abc.sig",
    "0.9.0",
    "2.0.0",
    "main",
    "x" * 128,
]


@pytest.mark.parametrize(
    ("f", "expected"),
    [
        # no filter: every tag, sorted by name
        (TagFilter(), sorted(TAGS)),
        # names: only those, and only if they exist
        (TagFilter(names=("latest", "v1.2.3", "absent")), ["latest", "v1.2.3"]),
        # include: re.search, any may match
        (TagFilter(include=(r"^v\d+\.\d+\.\d+$",)), ["v01.2.3", "v1.2.3"]),
        (TagFilter(include=("^latest$", "^main$")), ["latest", "main"]),
        (TagFilter(include=("rc",)), ["1.3.0-rc.1", "v1.2.3-rc1"]),
        (TagFilter(include=("^nomatch$",)), []),
        # exclude: none may match
        (
            TagFilter(exclude=(r"-rc\.?\d*$", r"\.sig$", "^x+$")),
            sorted(["latest", "v1.2.3", "1.2.4", "1.2", "v01.2.3", "0.9.0", "2.0.0", "main"]),
        ),
        # include then exclude
        (TagFilter(include=("^v",), exclude=("rc",)), ["v01.2.3", "v1.2.3"]),
        # semver: only tags that parse, version order, pre-releases excluded
        (TagFilter(semver=">=1.0.0"), ["1.2", "v1.2.3", "1.2.4", "2.0.0"]),
        (TagFilter(semver="<1"), ["0.9.0"]),
        (TagFilter(semver="^1.2"), ["1.2", "v1.2.3", "1.2.4"]),
        (TagFilter(semver="~1.2.3"), ["v1.2.3", "1.2.4"]),
        (TagFilter(semver=">=1.0.0 <2"), ["1.2", "v1.2.3", "1.2.4"]),
        (TagFilter(semver="*"), ["0.9.0", "1.2", "v1.2.3", "1.2.4", "2.0.0"]),
        # a range with a pre-release admits pre-releases of that same version only
        (TagFilter(semver=">=1.2.3-rc0"), ["v1.2.3-rc1", "v1.2.3", "1.2.4", "2.0.0"]),
        (TagFilter(semver=">=1.3.0-rc.0 <2"), ["1.3.0-rc.1"]),
        # newest: the N highest versions; non-versions dropped; pre-releases count
        (TagFilter(newest=2), ["1.3.0-rc.1", "2.0.0"]),
        (TagFilter(newest=1), ["2.0.0"]),
        (
            TagFilter(newest=100),
            ["0.9.0", "1.2", "v1.2.3-rc1", "v1.2.3", "1.2.4", "1.3.0-rc.1", "2.0.0"],
        ),
        # semver then newest
        (TagFilter(semver=">=1.0.0", newest=2), ["1.2.4", "2.0.0"]),
        (TagFilter(semver="^1", newest=2), ["v1.2.3", "1.2.4"]),
        # all stages in order: include, exclude, semver, newest
        (
            TagFilter(include=(r"^v?\d",), exclude=(r"^2\.",), semver=">=1", newest=2),
            ["v1.2.3", "1.2.4"],
        ),
        # names combined with the rest
        (TagFilter(names=("latest", "1.2.4", "2.0.0"), semver="<2"), ["1.2.4"]),
    ],
)
def test_select_tags(f: TagFilter, expected: list[str]) -> None:
    assert select_tags(TAGS, f) == expected


@pytest.mark.parametrize(
    ("tags", "f", "expected"),
    [
        # the same version under two spellings: ordered by name, both kept
        (["1.2.3", "v1.2.3"], TagFilter(semver=">=1"), ["1.2.3", "v1.2.3"]),
        (["1.2", "1.2.0", "1.1.9"], TagFilter(newest=2), ["1.2", "1.2.0"]),
        # numeric, not lexical, order
        (["1.10.0", "1.9.0", "1.2.0"], TagFilter(newest=2), ["1.9.0", "1.10.0"]),
        # only non-version tags: newest and semver both leave nothing
        (["latest", "main", "stable"], TagFilter(newest=3), []),
        (["latest", "main"], TagFilter(semver=">=0"), []),
        # duplicates in the listing are harmless
        (["a", "a", "b"], TagFilter(), ["a", "b"]),
        ([], TagFilter(newest=1), []),
        # very long tags go through untouched
        (["v" + "1" * 127], TagFilter(include=("^v",)), ["v" + "1" * 127]),
    ],
)
def test_select_tags_edges(tags: list[str], f: TagFilter, expected: list[str]) -> None:
    assert select_tags(tags, f) == expected


def test_select_tags_is_independent_of_listing_order() -> None:
    f = TagFilter(semver=">=1", newest=3)
    assert select_tags(TAGS, f) == select_tags(list(reversed(TAGS)), f)


# ------------------------------------------------------------------ prefixes, immutability


@pytest.mark.parametrize(
    ("prefix", "repository", "expected"),
    [
        ("", "team-a/app", "team-a/app"),
        ("mirror/", "team-a/app", "mirror/team-a/app"),
        ("mirror", "team-a/app", "mirror/team-a/app"),
        ("a/b/", "app", "a/b/app"),
        ("a/b", "app", "a/b/app"),
    ],
)
def test_target_repository(prefix: str, repository: str, expected: str) -> None:
    assert target_repository(rule(target_prefix=prefix), repository) == expected


@pytest.mark.parametrize(
    ("patterns", "tag", "expected"),
    [
        ((), "v1.2.3", False),
        ((r"^v\d+\.\d+\.\d+$",), "v1.2.3", True),
        ((r"^v\d+\.\d+\.\d+$",), "v1.2.3-rc1", False),
        ((r"^v\d+\.\d+\.\d+$",), "latest", False),
        (("latest", r"^\d"), "1.0", True),
        (("rc",), "v1.2.3-rc1", True),  # searched, not anchored
    ],
)
def test_is_immutable(patterns: tuple[str, ...], tag: str, expected: bool) -> None:
    assert is_immutable(rule(immutable_tags=patterns), tag) is expected


# ------------------------------------------------------------------ platforms


@pytest.mark.parametrize(
    ("platforms", "platform", "expected"),
    [
        ((), Platform("linux", "amd64"), True),
        ((), None, True),
        (("linux/amd64",), Platform("linux", "amd64"), True),
        (("linux/amd64",), Platform("linux", "arm64", "v8"), False),
        (("linux/amd64",), Platform("windows", "amd64"), False),
        (("linux/amd64", "linux/arm64"), Platform("linux", "arm64"), True),
        # no variant in the spec: any variant
        (("linux/arm64",), Platform("linux", "arm64", "v8"), True),
        (("linux/arm",), Platform("linux", "arm", "v6"), True),
        (("linux/arm",), Platform("linux", "arm", "v7"), True),
        # a variant in the spec must match
        (("linux/arm/v7",), Platform("linux", "arm", "v7"), True),
        (("linux/arm/v7",), Platform("linux", "arm", "v6"), False),
        (("linux/arm/v7",), Platform("linux", "arm"), False),
        # arm64 without a variant is arm64/v8
        (("linux/arm64/v8",), Platform("linux", "arm64"), True),
        (("linux/arm64/v8",), Platform("linux", "arm64", "v8"), True),
        (("linux/arm64/v9",), Platform("linux", "arm64"), False),
        # buildx attestation children and platform-less children are dropped by a filter
        (("linux/amd64",), Platform("unknown", "unknown"), False),
        (("linux/amd64",), None, False),
    ],
)
def test_platform_selected(
    platforms: tuple[str, ...], platform: Platform | None, expected: bool
) -> None:
    assert platform_selected(platforms, platform) is expected


# ------------------------------------------------------------------ backups

NOW = datetime(2024, 3, 5, 7, 8, 9, tzinfo=UTC)


@pytest.mark.parametrize(
    ("template", "tag", "expected"),
    [
        ("{tag}-previous", "v1.2.3", "v1.2.3-previous"),
        ("{tag}-{date}", "latest", "latest-20240305"),
        ("backup-{tag}-{datetime}", "v1", "backup-v1-20240305T070809Z"),
        ("{date}.{tag}", "main", "20240305.main"),
        ("{tag}-{tag}", "a", "a-a"),
    ],
)
def test_backup_tag(template: str, tag: str, expected: str) -> None:
    assert backup_tag(template, tag, NOW) == expected


def test_backup_tag_uses_utc() -> None:
    # 01:00 on the 6th in UTC+02:00 is still the 5th in UTC
    local = datetime(2024, 3, 6, 1, 0, 0, tzinfo=timezone(timedelta(hours=2)))
    assert backup_tag("{tag}-{date}", "x", local) == "x-20240305"
    # a naive datetime is taken as UTC
    assert (
        backup_tag("{tag}-{datetime}", "x", datetime(2024, 1, 2, 3, 4, 5)) == "x-20240102T030405Z"
    )


@pytest.mark.parametrize("length", [100, 119, 120, 127, 128])
def test_backup_tag_long_tags_stay_valid_and_distinct(length: int) -> None:
    tag = "a" * length
    result = backup_tag("{tag}-previous", tag, NOW)
    assert len(result) <= 128
    assert result.endswith("-previous")
    assert result != tag
    # two long tags that share their first 119 characters still get different backups
    other = backup_tag("{tag}-previous", "a" * (length - 1) + "b", NOW)
    assert other != result


def test_backup_tag_fits_exactly_when_it_can() -> None:
    tag = "a" * 119
    assert backup_tag("{tag}-previous", tag, NOW) == tag + "-previous"  # 128 characters


@pytest.mark.parametrize("template", ["-{tag}", ".{tag}", "{tag}/x", "{tag} x", "{tag}:x"])
def test_backup_tag_refuses_invalid_results(template: str) -> None:
    with pytest.raises(InvalidReferenceError):
        backup_tag(template, "v1", NOW)


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("{tag}-previous", None),
        ("{tag}-{date}", None),
        ("old-{tag}-{datetime}", None),
        ("{tag}", "gives the tag itself"),
        ("previous", "must contain {tag}"),
        ("{date}", "must contain {tag}"),
        ("{tag}-{when}", "unknown placeholder {when}"),
        ("{tag}-{}", "unknown placeholder {}"),
        ("-{tag}", "gives no valid tag"),
        ("{tag}-" + "x" * 125, "gives no valid tag"),
        ("{tag}!", "gives no valid tag"),
    ],
)
def test_backup_template_problem(template: str, fragment: str | None) -> None:
    problem = backup_template_problem(template)
    if fragment is None:
        assert problem is None
    else:
        assert problem is not None and fragment in problem


# ------------------------------------------------------------------ layering


def test_rules_is_pure() -> None:
    """rules.py is L0: it runs per tag and must not pull in I/O."""
    tree = ast.parse(pathlib.Path(rules.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"asyncio", "aiohttp", "yaml", "socket", "os", "subprocess"}


def test_version_order_is_semver_precedence() -> None:
    # the precedence example of semver.org §11, shuffled
    ordered = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.0.1",
        "1.10.0",
        "2.0.0-0",
        "2.0.0",
    ]
    shuffled = ordered[3:] + ordered[:3]
    shuffled.reverse()
    assert select_tags(shuffled, TagFilter(newest=len(ordered))) == ordered
    assert ordered == sorted(ordered, key=parse_version)  # the same order as Version's
