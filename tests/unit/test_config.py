"""The config loader: exact values from a full file, and every class of problem located."""

from __future__ import annotations

import os
import pathlib
import textwrap

import pytest

from syncd.config.load import load_config, load_config_text
from syncd.config.schema import (
    AccountConfig,
    Config,
    QuotaReserve,
    RegistryConfig,
    RuleConfig,
    ServerConfig,
    StateConfig,
    TagFilter,
)
from syncd.durations import format_duration, parse_duration
from syncd.errors import ConfigError, ConfigProblem
from syncd.secret import Secret

REPO = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "example.yaml"

# Two registries and one minimal rule; cases append to or replace parts of it.
BASE = """\
registries:
  src:
    url: http://127.0.0.1:5001
  dst:
    url: http://127.0.0.1:5002
rules:
  - name: r
    source: src
    targets: [dst]
    repositories: [team-a/app]
"""


def problems(text: str, env: dict[str, str] | None = None) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        load_config_text(textwrap.dedent(text), filename="c.yaml", environ=env or {})
    assert info.value.problems, "a ConfigError must carry its problems"
    return info.value.problems


def load(text: str, env: dict[str, str] | None = None) -> Config:
    return load_config_text(textwrap.dedent(text), filename="c.yaml", environ=env or {})


def secrets_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    for name in (
        "prod-ca.pem",
        "backup-password",
        "edge-client.pem",
        "edge-client.key",
        "hub-1",
        "hub-2",
    ):
        (tmp_path / name).write_text("x\n")
    return tmp_path


def example_env(tmp_path: pathlib.Path) -> dict[str, str]:
    return {
        "DEV_REGISTRY_TOKEN": "dev-token-value",
        "EDGE_PASSWORD": "edge-password-value",
        "SYNCD_SECRETS_DIR": str(secrets_dir(tmp_path)),
        "SYNCD_WEBHOOK_TOKEN": "webhook-token-value",
    }


# ------------------------------------------------------------------ a full, valid file


def test_example_loads_into_exact_values(tmp_path: pathlib.Path) -> None:
    env = example_env(tmp_path)
    config = load_config(EXAMPLE, environ=env)
    d = str(tmp_path)
    assert config == Config(
        path=str(EXAMPLE),
        registries={
            "dev": RegistryConfig(
                name="dev",
                url="http://127.0.0.1:5001",
                username="ci-bot",
                password=Secret("dev-token-value"),
                max_concurrency=8,
            ),
            "prod": RegistryConfig(
                name="prod",
                url="https://registry.example.com",
                ca_file=f"{d}/prod-ca.pem",
                tls_verify=True,
                docker_config=True,
            ),
            "backup": RegistryConfig(
                name="backup",
                url="backup.example.com:5443",
                username="syncd",
                password_file=f"{d}/backup-password",
                max_concurrency=4,
            ),
            "edge": RegistryConfig(
                name="edge",
                url="http://edge.internal:5000",
                username="mirror",
                password=Secret("edge-password-value"),
                allow_insecure_auth=True,
                client_cert=f"{d}/edge-client.pem",
                client_key=f"{d}/edge-client.key",
            ),
            "hub": RegistryConfig(
                name="hub",
                url="https://registry-1.docker.io",
                credentials=(
                    AccountConfig("mirror-bot-1", None, f"{d}/hub-1"),
                    AccountConfig("mirror-bot-2", None, f"{d}/hub-2"),
                ),
                quota_reserve=QuotaReserve(10, percent=True),
                requests_per_second=5.0,
                max_retry_wait=60.0,
            ),
        },
        rules=(
            RuleConfig(
                name="app-release",
                source="dev",
                targets=("prod", "backup"),
                repositories=("team-a/app", "team-a/*", "team-b/**"),
                tags=TagFilter(
                    include=(r"^v?\d+\.\d+\.\d+", "^latest$"),
                    exclude=(r"-rc\d*$", "-debug$"),
                    semver=">=1.0.0",
                    newest=5,
                ),
                platforms=("linux/amd64", "linux/arm64", "linux/arm/v7"),
                target_prefix="mirror/",
                overwrite=True,
                backup="{tag}-previous-{date}",
                immutable_tags=(r"^v\d+\.\d+\.\d+$",),
                referrers=True,
                referrers_types=(
                    "application/vnd.dev.sigstore.bundle.v0.3+json",
                    "application/spdx+json",
                ),
                require_signature=False,
                interval=60.0,
                schedule=None,
                retries=3,
                concurrency=4,
                prune="unselected",
                protect=("^latest$",),
                max_deletions=5,
            ),
            RuleConfig(
                name="base-images",
                source="prod",
                targets=("edge",),
                repositories=("library/alpine",),
                tags=TagFilter(names=("3.19", "3.20", "latest")),
                overwrite=False,
                referrers=False,
                interval=300.0,
                schedule="*/10 * * * *",
                retries=5,
                concurrency=8,
            ),
            RuleConfig(
                name="hub-mirror",
                source="hub",
                targets=("prod",),
                repositories=("library/nginx",),
                tags=TagFilter(include=(r"^1\.\d+\.\d+$",), newest=3),
                interval=300.0,
            ),
        ),
        server=ServerConfig(listen="127.0.0.1:9090", webhook_token=Secret("webhook-token-value")),
        state=StateConfig(path="/var/lib/syncd/state.db"),
    )
    assert config.rule("base-images") is config.rules[1]
    for value in ("dev-token-value", "edge-password-value", "webhook-token-value"):
        assert value not in repr(config)
        assert value not in str(config)


def test_minimal_config_gets_defaults() -> None:
    config = load(BASE)
    assert config.server == ServerConfig()
    (r,) = config.rules
    assert r == RuleConfig(name="r", source="src", targets=("dst",), repositories=("team-a/app",))
    assert config.registries["src"].scheme == "http"


def test_single_strings_for_lists() -> None:
    config = load(
        BASE.replace("[dst]", "dst").replace("[team-a/app]", "team-a/*")
        + "    immutable_tags: '^v'\n    platforms: linux/amd64\n"
    )
    (r,) = config.rules
    assert r.targets == ("dst",)
    assert r.repositories == ("team-a/*",)
    assert r.immutable_tags == ("^v",)
    assert r.platforms == ("linux/amd64",)


@pytest.mark.parametrize(
    ("tags_yaml", "expected"),
    [
        ("tags: [v1, latest]", TagFilter(names=("v1", "latest"))),
        ("tags: latest", TagFilter(names=("latest",))),
        ("tags: {names: [v1]}", TagFilter(names=("v1",))),
        ("tags:", TagFilter()),
        ("tags: {}", TagFilter()),
        ("tags: {include: '^v', newest: 3}", TagFilter(include=("^v",), newest=3)),
        ("tags: {semver: '^1.2 || >=3'}", TagFilter(semver="^1.2 || >=3")),
    ],
)
def test_tag_forms(tags_yaml: str, expected: TagFilter) -> None:
    assert load(BASE + f"    {tags_yaml}\n").rules[0].tags == expected


@pytest.mark.parametrize(
    ("defaults", "rule", "interval", "schedule", "retries", "concurrency"),
    [
        ("", "", 300.0, None, 5, 8),
        ("interval: 30s\n  retries: 2\n  concurrency: 3", "", 30.0, None, 2, 3),
        ("interval: 30s", "interval: 1h30m", 5400.0, None, 5, 8),
        ("interval: 30s", "schedule: '@hourly'", 30.0, "@hourly", 5, 8),
        ("schedule: '0 * * * *'", "", 300.0, "0 * * * *", 5, 8),
        # a rule's interval replaces a default schedule
        ("schedule: '0 * * * *'", "interval: 2m", 120.0, None, 5, 8),
        ("retries: 2", "retries: 7", 300.0, None, 7, 8),
        ("concurrency: 2", "concurrency: 1", 300.0, None, 5, 1),
    ],
)
def test_defaults_merge_into_rules(
    defaults: str,
    rule: str,
    interval: float,
    schedule: str | None,
    retries: int,
    concurrency: int,
) -> None:
    text = (
        BASE
        + (f"    {rule}\n" if rule else "")
        + (f"defaults:\n  {defaults}\n" if defaults else "")
    )
    r = load(text).rules[0]
    assert (r.interval, r.schedule, r.retries, r.concurrency) == (
        interval,
        schedule,
        retries,
        concurrency,
    )


@pytest.mark.parametrize(
    ("defaults", "rule", "seconds"),
    [
        ("", "", 0.0),
        ("", "    target_recheck: 10m\n", 600.0),
        ("defaults: {target_recheck: 15m}\n", "", 900.0),
        ("defaults: {target_recheck: 15m}\n", "    target_recheck: 0\n", 0.0),
        ("defaults: {target_recheck: 15m}\n", "    target_recheck: '0s'\n", 0.0),
    ],
)
def test_target_recheck(defaults: str, rule: str, seconds: float) -> None:
    assert load(defaults + BASE + rule).rules[0].target_recheck == seconds


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (30, 30.0),
        (1.5, 1.5),
        ("30", 30.0),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("2m30s", 150.0),
        ("1d", 86400.0),
        ("1w", 604800.0),
        ("1.5h", 5400.0),
        ("500ms", 0.5),
        (" 10s ", 10.0),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "bad", ["", "5mins", "m", "1h 30m", "-5s", "0", 0, -1, "1x", "s5", True, None]
)
def test_parse_duration_refuses(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.5, "500ms"), (30, "30s"), (5400, "1h30m"), (86400, "1d")]
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# ------------------------------------------------------------------ interpolation


def test_env_interpolation_anywhere_and_escape() -> None:
    env = {"HOST": "127.0.0.1:5009", "USER": "bot", "PW": "s3cret", "TEAM": "team-a"}
    config = load(
        """\
        registries:
          src:
            url: http://${HOST}
            username: ${USER}
            password: pre-${PW}-$${NOT_A_VAR}
          dst:
            url: http://127.0.0.1:5002
        rules:
          - name: r
            source: src
            targets: [dst]
            repositories: ['${TEAM}/*']
            tags: {include: ['^a$${b']}
        """,
        env,
    )
    src = config.registries["src"]
    assert src.url == "http://127.0.0.1:5009"
    assert src.username == "bot"
    assert src.password is not None and src.password.reveal() == "pre-s3cret-${NOT_A_VAR}"
    assert config.rules[0].repositories == ("team-a/*",)
    assert config.rules[0].tags.include == ("^a${b",)


def test_env_is_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNCD_TEST_USER", "from-os")
    text = BASE.replace(
        "url: http://127.0.0.1:5001", "url: http://127.0.0.1:5001\n    username: ${SYNCD_TEST_USER}"
    )
    config = load_config_text(text)
    assert config.registries["src"].username == "from-os"


# ------------------------------------------------------------------ problems, located

CASES: list[tuple[str, str, list[tuple[int, int, str, str]]]] = [
    (
        "yaml-syntax",
        "registries:\n  src: {url: x\nrules: []\n",
        [(3, 6, "", "YAML syntax error")],
    ),
    (
        "yaml-tab",
        "registries:\n\tsrc: {}\n",
        [(2, 1, "", "YAML syntax error")],
    ),
    ("empty", "", [(1, 1, "", "the file is empty")]),
    ("comments-only", "# nothing\n", [(1, 1, "", "the file is empty")]),
    ("list", "- a\n", [(1, 1, "", "must be a mapping")]),
    ("scalar", "hello\n", [(1, 1, "", "must be a mapping")]),
    (
        "no-rules",
        "registries:\n  a: {url: 'h:1'}\n",
        [(1, 1, "rules", "required key 'rules' is missing")],
    ),
    (
        "empty-rules",
        "registries:\n  a: {url: 'h:1'}\nrules: []\n",
        [(3, 8, "rules", "must not be empty")],
    ),
    (
        "unknown-top-level",
        BASE + "rule: []\n",
        [(11, 1, "rule", "unknown key 'rule' (did you mean 'rules'?)")],
    ),
    (
        "unknown-top-level-no-guess",
        BASE + "zzz: 1\n",
        [(11, 1, "zzz", "allowed here: cluster, defaults, registries, rules, server, state")],
    ),
    (
        "unknown-registry-key",
        BASE.replace("url: http://127.0.0.1:5002", "url: http://127.0.0.1:5002\n    passwrd: x"),
        [(6, 5, "registries.dst.passwrd", "did you mean 'password'?")],
    ),
    (
        "unknown-rule-key",
        BASE + "    target-prefix: m/\n",
        [(11, 5, "rules[0].target-prefix", "did you mean 'target_prefix'?")],
    ),
    (
        "unknown-tags-key",
        BASE + "    tags:\n      includes: [a]\n",
        [(12, 7, "rules[0].tags.includes", "did you mean 'include'?")],
    ),
    (
        "unknown-defaults-key",
        BASE + "defaults:\n  intervall: 5m\n",
        [(12, 3, "defaults.intervall", "did you mean 'interval'?")],
    ),
    (
        "unknown-server-key",
        BASE + "server:\n  listen_addr: 127.0.0.1:1\n",
        [(12, 3, "server.listen_addr", "did you mean 'listen'?")],
    ),
    (
        "duplicate-key",
        BASE.replace("    source: src\n", "    source: src\n    source: dst\n"),
        [(9, 5, "rules[0].source", "duplicate key 'source' (first at line 8)")],
    ),
    (
        "wrong-types",
        BASE
        + "    overwrite: 'no'\n    tags: {newest: '3'}\n    targets2: 1\n"
        + "defaults:\n  retries: 2.5\n",
        [
            (11, 16, "rules[0].overwrite", "expected true or false, got a string"),
            (12, 20, "rules[0].tags.newest", "expected an integer, got a string"),
            (13, 5, "rules[0].targets2", "unknown key"),
            (15, 12, "defaults.retries", "expected an integer, got a number"),
        ],
    ),
    (
        "number-where-string",
        BASE + "    tags: [1.10, latest]\n",
        [(11, 12, "rules[0].tags[0]", "expected a string, got a number (quote it)")],
    ),
    (
        "registry-not-mapping",
        BASE.replace("  dst:\n    url: http://127.0.0.1:5002\n", "  dst:\n"),
        [(4, 7, "registries.dst", "expected a mapping of keys, got null")],
    ),
    (
        "missing-url",
        BASE.replace("    url: http://127.0.0.1:5002\n", "    username: u\n"),
        [(5, 5, "registries.dst.url", "required key 'url' is missing")],
    ),
    (
        "bad-regexes",
        BASE + "    tags:\n      include: ['^v', '(']\n      exclude: ['[']\n"
        "    immutable_tags: ['*x']\n",
        [
            (12, 23, "rules[0].tags.include[1]", "invalid regex '('"),
            (13, 17, "rules[0].tags.exclude[0]", "invalid regex '['"),
            (14, 22, "rules[0].immutable_tags[0]", "invalid regex '*x'"),
        ],
    ),
    (
        "bad-semver",
        BASE + "    tags: {semver: '>=one'}\n",
        [(11, 20, "rules[0].tags.semver", "invalid version range '>=one'")],
    ),
    (
        "empty-semver",
        BASE + "    tags: {semver: ''}\n",
        [(11, 20, "rules[0].tags.semver", "empty version range")],
    ),
    (
        "bad-durations",
        BASE + "    interval: 5 minutes\ndefaults:\n  interval: 0\n",
        [
            (11, 15, "rules[0].interval", "invalid duration '5 minutes'"),
            (13, 13, "defaults.interval", "more than 0 seconds"),
        ],
    ),
    (
        "bad-cron",
        BASE + "    schedule: '* * *'\n",
        [(11, 15, "rules[0].schedule", "invalid cron expression '* * *'")],
    ),
    (
        "interval-and-schedule",
        BASE + "    interval: 1m\n    schedule: '@daily'\ndefaults:\n  interval: 1m\n"
        "  schedule: '@daily'\n",
        [
            (12, 5, "rules[0].schedule", "either interval or schedule"),
            (15, 3, "defaults.schedule", "either interval or schedule"),
        ],
    ),
    (
        "undefined-registries",
        BASE.replace("source: src", "source: scr").replace("[dst]", "[dst, dest, zzz]"),
        [
            (
                8,
                13,
                "rules[0].source",
                "registry 'scr' is not defined under registries (did you mean 'src'?)",
            ),
            (9, 20, "rules[0].targets[1]", "(did you mean 'dst'?)"),
            (
                9,
                26,
                "rules[0].targets[2]",
                "registry 'zzz' is not defined under registries; defined: src, dst",
            ),
        ],
    ),
    (
        "duplicate-rule-names",
        BASE + "  - name: r\n    source: src\n    targets: dst\n    repositories: x\n",
        [(11, 11, "rules[1].name", "duplicate rule name 'r' (first at line 7)")],
    ),
    (
        "source-is-target",
        BASE.replace("[dst]", "[dst, src]"),
        [
            (
                9,
                20,
                "rules[0].targets[1]",
                "target 'src' is the rule's source and target_prefix is empty",
            )
        ],
    ),
    (
        "same-url-as-source",
        BASE.replace("http://127.0.0.1:5002", "http://127.0.0.1:5001/"),
        [(9, 15, "rules[0].targets[0]", "has the same url as the source")],
    ),
    (
        "copies-of-copies",
        BASE.replace("[dst]", "[src]").replace("[team-a/app]", "['**']")
        + "    target_prefix: m/\n",
        [(10, 20, "rules[0].repositories[0]", "copy the copies again")],
    ),
    (
        "missing-env",
        BASE.replace("url: http://127.0.0.1:5002", "url: ${DST_URL}\n    username: ${DST_USER}"),
        [
            (5, 10, "registries.dst.url", "environment variable DST_URL is not set"),
            (6, 15, "registries.dst.username", "environment variable DST_USER is not set"),
        ],
    ),
    (
        "malformed-env",
        BASE.replace(
            "url: http://127.0.0.1:5002",
            "url: http://127.0.0.1:5002\n    username: '${1X}'\n    password: '${OPEN'",
        ),
        [
            (6, 15, "registries.dst.username", "invalid variable name"),
            (7, 15, "registries.dst.password", "unterminated '${'"),
        ],
    ),
    (
        "password-and-password-file",
        BASE.replace(
            "url: http://127.0.0.1:5002",
            "url: http://127.0.0.1:5002\n    username: u\n    password: p\n    password_file: "
            + __file__,
        ),
        [(8, 5, "registries.dst.password_file", "either password or password_file")],
    ),
    (
        "password-without-username",
        BASE.replace("url: http://127.0.0.1:5002", "url: http://127.0.0.1:5002\n    password: p"),
        [(6, 5, "registries.dst.password", "needs a username")],
    ),
    (
        "missing-files",
        BASE.replace(
            "url: http://127.0.0.1:5002",
            "url: http://127.0.0.1:5002\n    username: u\n    password_file: /nonexistent/pw\n"
            "    ca_file: /nonexistent/ca.pem\n    client_key: " + __file__,
        ),
        [
            (
                7,
                20,
                "registries.dst.password_file",
                "password_file '/nonexistent/pw' does not exist",
            ),
            (8, 14, "registries.dst.ca_file", "ca_file '/nonexistent/ca.pem' does not exist"),
            (9, 5, "registries.dst.client_key", "client_key needs client_cert"),
        ],
    ),
    (
        "bad-urls",
        BASE.replace("http://127.0.0.1:5001", "ftp://127.0.0.1:5001").replace(
            "http://127.0.0.1:5002",
            "http://h:5002/v2/\n  c: {url: 'https://u:p@h'}\n  d: {url: 'h:99999'}\n"
            "  e: {url: ''}\n  f: {url: 'http://h_x'}",
        ),
        [
            (3, 10, "registries.src.url", "scheme must be http or https"),
            (5, 10, "registries.dst.url", "must not have a path"),
            (6, 12, "registries.c.url", "must not contain credentials"),
            (7, 12, "registries.d.url", "invalid url 'h:99999'"),
            (8, 12, "registries.e.url", "must not be empty"),
            (9, 12, "registries.f.url", "invalid url 'http://h_x'"),
        ],
    ),
    (
        "bad-registry-name",
        BASE.replace("  dst:", "  Dst:").replace("[dst]", "[Dst]"),
        [(4, 3, "registries.Dst", "invalid registry name 'Dst'")],
    ),
    (
        "bad-platforms",
        BASE + "    platforms: [linux/amd64, linux, Linux/ARM64, linux/arm/v7/x, linux/amd64]\n",
        [
            (11, 30, "rules[0].platforms[1]", "invalid platform 'linux'"),
            (11, 37, "rules[0].platforms[2]", "invalid platform 'Linux/ARM64'"),
            (11, 50, "rules[0].platforms[3]", "invalid platform"),
        ],
    ),
    (
        "duplicate-platform",
        BASE + "    platforms: [linux/amd64, linux/amd64]\n",
        [(11, 16, "rules[0].platforms", "'linux/amd64' is listed twice")],
    ),
    (
        "counts-below-one",
        BASE.replace(
            "url: http://127.0.0.1:5002", "url: http://127.0.0.1:5002\n    max_concurrency: 0"
        )
        + "    concurrency: 0\n    retries: -1\n    tags: {newest: 0}\n",
        [
            (6, 22, "registries.dst.max_concurrency", "must be at least 1"),
            (12, 18, "rules[0].concurrency", "must be at least 1"),
            (13, 14, "rules[0].retries", "must be at least 1"),
            (14, 20, "rules[0].tags.newest", "must be at least 1"),
        ],
    ),
    (
        "empty-targets-and-repositories",
        BASE.replace("[dst]", "[]").replace("[team-a/app]", "[]"),
        [
            (9, 14, "rules[0].targets", "must not be empty"),
            (10, 19, "rules[0].repositories", "must not be empty"),
        ],
    ),
    (
        "bad-repositories",
        BASE.replace("[team-a/app]", "[Team/App, 'team-a/**x', 'a//b', '/a', ok/*, 'x-']"),
        [
            (10, 20, "rules[0].repositories[0]", "invalid repository 'Team/App'"),
            (10, 30, "rules[0].repositories[1]", "'**' must be a whole path component"),
            (10, 44, "rules[0].repositories[2]", "invalid repository 'a//b'"),
            (10, 52, "rules[0].repositories[3]", "invalid repository '/a'"),
            (10, 64, "rules[0].repositories[5]", "invalid repository 'x-'"),
        ],
    ),
    (
        "single-bad-repository",
        BASE.replace("[team-a/app]", "UPPER"),
        [(10, 19, "rules[0].repositories", "invalid repository 'UPPER'")],
    ),
    (
        "bad-backups",
        BASE + "    backup: '{tag}'\n  - name: r2\n    source: src\n    targets: dst\n"
        "    repositories: x\n    backup: '-{tag}'\n",
        [
            (11, 13, "rules[0].backup", "gives the tag itself"),
            (16, 13, "rules[1].backup", "gives no valid tag"),
        ],
    ),
    (
        "bad-tag-names",
        BASE + "    tags: [ok, '-bad', 'a b']\n",
        [
            (11, 16, "rules[0].tags[1]", "invalid tag '-bad'"),
            (11, 24, "rules[0].tags[2]", "invalid tag 'a b'"),
        ],
    ),
    (
        "bad-rule-name-and-prefix",
        BASE.replace("name: r", "name: 'my rule'") + "    target_prefix: 'Mirror/'\n",
        [
            (7, 11, "rules[0].name", "invalid rule name 'my rule'"),
            (11, 20, "rules[0].target_prefix", "invalid target_prefix 'Mirror/'"),
        ],
    ),
    (
        "bad-server",
        BASE + "server:\n  listen: 9090\n  webhook_token: ''\n",
        [
            (12, 11, "server.listen", "expected a string, got an integer (quote it)"),
            (13, 18, "server.webhook_token", "must not be empty"),
        ],
    ),
    (
        "bad-listen",
        BASE + "server: {listen: 'localhost'}\n",
        [(11, 18, "server.listen", "invalid listen address 'localhost'")],
    ),
    (
        "bad-referrers-types",
        BASE + "    referrers_types: [application/spdx+json, sbom]\n",
        [(11, 46, "rules[0].referrers_types[1]", "invalid artifact type 'sbom'")],
    ),
    (
        "bad-target-recheck",
        BASE + "    target_recheck: -5m\n",
        [(11, 21, "rules[0].target_recheck", "invalid duration '-5m'")],
    ),
    (
        "recursive-alias",
        BASE + "    platforms: &p [linux/amd64, *p]\n",
        [(11, 16, "rules[0].platforms[1]", "an alias refers to itself")],
    ),
    (
        "complex-key",
        BASE + "    ? [a, b]\n    : 1\n",
        [(11, 7, "rules[0].?", "a key must be a plain name")],
    ),
    (
        "custom-yaml-tag",
        BASE + "    overwrite: !!python/object:os.system x\n",
        [(11, 16, "", "YAML syntax error")],
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_problem_is_located(text: str, expected: list[tuple[int, int, str, str]]) -> None:
    found = problems(text)
    listing = "\n".join(map(str, found))
    for line, column, key, fragment in expected:
        matching = [p for p in found if fragment in p.message and p.key == key]
        assert matching, f"no problem at {key!r} mentions {fragment!r}; got:\n{listing}"
        assert (matching[0].line, matching[0].column) == (line, column), str(matching[0])
        assert matching[0].file == "c.yaml"
    # each expected problem is reported once, and nothing else is reported
    assert len(found) == len(expected), "\n".join(map(str, found))


def test_all_problems_reported_at_once_and_sorted() -> None:
    text = (
        BASE.replace("source: src", "source: nope")
        + "    tags: {include: ['('], semver: 'foo'}\n    interval: soon\n    bogus: 1\n"
        + "defaults:\n  retries: 0\n"
    )
    found = problems(text)
    assert [p.key for p in found] == [
        "rules[0].source",
        "rules[0].tags.include[0]",
        "rules[0].tags.semver",
        "rules[0].interval",
        "rules[0].bogus",
        "defaults.retries",
    ]
    assert [(p.line, p.column) for p in found] == sorted((p.line, p.column) for p in found)


def test_problem_renders_file_line_column_key() -> None:
    (p,) = problems(BASE + "    tags: {semver: '>=one'}\n")
    assert str(p) == (
        "c.yaml:11:20: rules[0].tags.semver: invalid version range '>=one': "
        "npm syntax, e.g. '>=1.2.0 <2', '^1.2', '~1.2.3'"
    )


def test_missing_env_suppresses_follow_on_errors() -> None:
    # an unset variable leaves an empty url; that must not also be reported as a bad url
    (p,) = problems(BASE.replace("http://127.0.0.1:5002", "${NOPE}"))
    assert p.message == "environment variable NOPE is not set"


# ------------------------------------------------------------------ secrets never printed

SECRET = "hunter2-Very-S3cret"


@pytest.mark.parametrize(
    ("text", "env"),
    [
        # a wrong-typed neighbour of an inline password
        (
            BASE.replace(
                "url: http://127.0.0.1:5002",
                f"url: http://127.0.0.1:5002\n    username: u\n    password: {SECRET}\n"
                "    max_concurrency: lots\n    tls_verify: 'yes'",
            ),
            {},
        ),
        # the password itself has the wrong type of neighbour value and the wrong key nearby
        (
            BASE.replace(
                "url: http://127.0.0.1:5002",
                f"url: http://127.0.0.1:5002\n    username: u\n    pasword: {SECRET}",
            ),
            {},
        ),
        # a password from the environment, used where a regex, url, and prefix go
        (
            BASE.replace("http://127.0.0.1:5002", "${PW}")
            + "    tags: {include: ['${PW}(']}\n    target_prefix: '${PW}'\n    backup: '${PW}'\n",
            {"PW": SECRET},
        ),
        # a secret in a url
        (BASE.replace("http://127.0.0.1:5002", f"https://user:{SECRET}@h"), {}),
        # YAML syntax errors on the password's line
        (BASE.replace("url: http://127.0.0.1:5002", f'url: x\n    password: "{SECRET}'), {}),
        (BASE.replace("url: http://127.0.0.1:5002", f"url: x\n    password: {SECRET}: x"), {}),
        (BASE.replace("url: http://127.0.0.1:5002", f"url: x\n    password: {SECRET}\n\t"), {}),
        # a webhook token next to a bad listen address, and a password that is not a string
        (BASE + f"server:\n  listen: nope\n  webhook_token: {SECRET}\n", {}),
        (BASE + "server:\n  webhook_token: ${PW}\n  listen: 1\n", {"PW": SECRET}),
        # a proxy URL with a password: wrong port, a path, a socks scheme, from the env
        (
            BASE.replace(
                "url: http://127.0.0.1:5002", f"url: x\n    proxy: http://u:{SECRET}@p:99999"
            ),
            {},
        ),
        (
            BASE.replace(
                "url: http://127.0.0.1:5002", f"url: x\n    proxy: http://u:{SECRET}@p:1/x"
            ),
            {},
        ),
        (
            BASE.replace(
                "url: http://127.0.0.1:5002", f"url: x\n    proxy: socks5://u:{SECRET}@p:1"
            ),
            {},
        ),
        (
            BASE.replace("url: http://127.0.0.1:5002", "url: x\n    proxy: http://u:${PW}@p:1/y"),
            {"PW": SECRET},
        ),
        # a secret that is not a valid variable name inside ${…}
        (
            BASE.replace("url: http://127.0.0.1:5002", f"url: x\n    password: ab${{{SECRET} x}}"),
            {},
        ),
    ],
)
def test_secrets_never_in_problems(text: str, env: dict[str, str]) -> None:
    found = problems(text, env)
    with pytest.raises(ConfigError) as info:
        load_config_text(text, filename="c.yaml", environ=env)
    rendered = str(info.value) + "\n" + "\n".join(repr(p) for p in found)
    assert SECRET not in rendered
    assert SECRET[:8] not in rendered
    assert "hunter2" not in rendered


def test_registry_proxy_keeps_its_credentials_apart() -> None:
    cfg = load(
        BASE.replace(
            "url: http://127.0.0.1:5002",
            "url: http://127.0.0.1:5002\n    proxy: http://bob:${PW}@Proxy.Corp:3128",
        ),
        {"PW": SECRET},
    )
    proxy = cfg.registries["dst"].proxy
    assert proxy is not None and proxy.url == "http://proxy.corp:3128"
    assert proxy.username == "bob" and proxy.password is not None
    assert proxy.password.reveal() == SECRET and proxy.origin == "registries.dst.proxy"
    assert SECRET not in repr(cfg) and cfg.registries["src"].proxy is None


def test_registry_proxy_problems_are_located() -> None:
    (p,) = problems(BASE.replace("url: http://127.0.0.1:5002", "url: x\n    proxy: ftp://p:1"))
    assert (p.line, p.key) == (6, "registries.dst.proxy")
    assert "proxy scheme must be http" in p.message


def test_values_from_env_are_masked_in_messages() -> None:
    (p,) = problems(BASE + "    tags: {include: ['${RX}']}\n", {"RX": "abc("})
    assert p.message.startswith("invalid regex (value from the environment):")
    assert "abc(" not in p.message


def test_env_values_fill_numbers_booleans_and_durations() -> None:
    text = (
        BASE.replace(
            "url: http://127.0.0.1:5002",
            "url: http://127.0.0.1:5002\n    max_concurrency: ${N}\n    tls_verify: ${VERIFY}\n"
            "    requests_per_second: ${RPS}\n    username: u\n    password: ${PW}",
        )
        + "    retries: ${RETRIES}\n    interval: ${EVERY}\n    overwrite: ${OVERWRITE}\n"
    )
    env = {
        "N": "3",
        "VERIFY": "false",
        "RPS": "2.5",
        "PW": "12345",
        "RETRIES": "7",
        "EVERY": "5m",
        "OVERWRITE": "True",
    }
    config = load(text, env)
    dst = config.registries["dst"]
    assert (dst.max_concurrency, dst.tls_verify, dst.requests_per_second) == (3, False, 2.5)
    assert dst.password is not None and dst.password.reveal() == "12345"  # a string key
    rule = config.rules[0]
    assert (rule.retries, rule.interval, rule.overwrite) == (7, 300.0, True)


@pytest.mark.parametrize(
    ("line", "value", "expected"),
    [
        ("    retries: ${X}\n", "seven", "expected an integer"),
        ("    overwrite: ${X}\n", "yes-secret", "expected true or false"),
        ("    retries: ${X}\n", "1.5", "expected an integer"),
    ],
)
def test_env_value_of_the_wrong_kind_is_located_and_not_echoed(
    line: str, value: str, expected: str
) -> None:
    (p,) = problems(BASE + line, {"X": value})
    key = line.strip().split(":")[0]
    assert (p.line, p.column, p.key) == (
        11,
        len(line) - len(line.lstrip()) + len(key) + 3,
        f"rules[0].{key}",
    )
    assert p.message.startswith(expected)
    assert "(value from the environment)" in p.message
    assert value not in p.message


def test_fields_that_come_from_the_place_are_unknown_keys_in_the_file() -> None:
    # A registry is named by its key and the config's path is the file's: writing them is
    # an unknown key, and the allowed keys offered leave them out.
    text = BASE.replace("  dst:\n", "  dst:\n    name: other\n") + "path: /elsewhere\n"
    found = [(p.line, p.column, p.key, p.message) for p in problems(text)]
    assert found == [
        (5, 5, "registries.dst.name", "unknown key 'name' (did you mean 'username'?)"),
        (
            12,
            1,
            "path",
            "unknown key 'path'; allowed here: cluster, defaults, registries, rules, server, state",
        ),
    ]


def test_quoted_env_value_stays_a_string() -> None:
    (p,) = problems(BASE + '    retries: "${X}"\n', {"X": "3"})
    assert (p.key, p.message) == (
        "rules[0].retries",
        "expected an integer, got a string (value from the environment)",
    )


# ------------------------------------------------------------------ files


def test_load_config_file_paths_are_relative_to_config(tmp_path: pathlib.Path) -> None:
    (tmp_path / "pw").write_text("secret\n")
    cfg = tmp_path / "syncd.yaml"
    cfg.write_text(
        BASE.replace(
            "url: http://127.0.0.1:5002",
            "url: http://127.0.0.1:5002\n    username: u\n    password_file: pw",
        )
    )
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    cwd = os.getcwd()
    os.chdir(elsewhere)
    try:
        config = load_config(cfg, environ={})
    finally:
        os.chdir(cwd)
    assert config.registries["dst"].password_file == str(tmp_path / "pw")
    assert config.path == str(cfg)


def test_check_files_false_skips_existence() -> None:
    text = BASE.replace(
        "url: http://127.0.0.1:5002",
        "url: http://127.0.0.1:5002\n    username: u\n    password_file: /run/secrets/nope",
    )
    problems(text)
    config = load_config_text(text, environ={}, check_files=False)
    assert config.registries["dst"].password_file == "/run/secrets/nope"


def test_unreadable_config_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.yaml", environ={})
    (p,) = info.value.problems
    assert (p.file, p.line, p.column) == (str(tmp_path / "absent.yaml"), 1, 1)
    assert "cannot read" in p.message


def test_non_utf8_config_file(tmp_path: pathlib.Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"registries:\n  a: {url: '\xff'}\n")
    with pytest.raises(ConfigError) as info:
        load_config(cfg, environ={})
    (p,) = info.value.problems
    assert (p.line, p.message) == (2, "not UTF-8 text")


def test_alias_bomb_is_refused() -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 8):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 10) + "]")
    (p,) = problems("\n".join(lines) + "\n")
    assert "too large" in p.message


def test_anchors_and_merge_keys_work() -> None:
    config = load(
        """\
        registries:
          src: &common
            url: http://127.0.0.1:5001
          dst:
            <<: *common
            max_concurrency: 2
        rules:
          - {name: r, source: src, targets: dst, repositories: a, target_prefix: m/}
        """
    )
    assert config.registries["dst"].url == "http://127.0.0.1:5001"
    assert config.registries["dst"].max_concurrency == 2


# ------------------------------------------------------------------ state and prune


def test_state_path_default_none_and_relative() -> None:
    assert load(BASE, env={"XDG_STATE_HOME": "/x"}).state.path == "/x/syncd/state.db"
    assert load(BASE, env={"STATE_DIRECTORY": "/var/lib/syncd"}).state.path == (
        "/var/lib/syncd/state.db"
    )
    assert load(BASE + "state: {path: none}\n").state.path is None
    rel = load(BASE + "state: {path: data/s.db}\n").state.path
    assert rel == os.path.join(os.getcwd(), "data", "s.db")


def test_prune_keys_load_and_default() -> None:
    r = load(BASE).rules[0]
    assert (r.prune, r.protect, r.max_deletions) == (None, (), 10)
    text = BASE + "    prune: unselected\n    protect: '^latest$'\n    max_deletions: 3\n"
    r = load(text).rules[0]
    assert (r.prune, r.protect, r.max_deletions) == ("unselected", ("^latest$",), 3)


@pytest.mark.parametrize(
    ("extra", "key", "message"),
    [
        ("    prune: everything\n", "rules[0].prune", "'deleted' or 'unselected'"),
        ("    protect: ['(']\n", "rules[0].protect[0]", "invalid regex"),
        ("    max_deletions: 0\n", "rules[0].max_deletions", "at least 1"),
        ("state: {file: x}\n", "state.file", "unknown key 'file'"),
    ],
)
def test_bad_state_and_prune_keys_are_located(extra: str, key: str, message: str) -> None:
    (p,) = problems(BASE + extra)
    assert p.key == key and message in p.message, p
