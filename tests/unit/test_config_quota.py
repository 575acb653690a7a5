"""Config keys of rate limits: credentials, quota_reserve, requests_per_second, max_retry_wait."""

from __future__ import annotations

import pathlib
import textwrap

import pytest

from syncd.config.load import load_config_text
from syncd.config.schema import AccountConfig, Config, QuotaReserve
from syncd.errors import ConfigError, ConfigProblem
from syncd.secret import Secret

RULES = """\
rules:
  - name: r
    source: hub
    targets: [dst]
    repositories: [library/nginx]
"""


def config(registry: str, defaults: str = "") -> str:
    return (
        "registries:\n  hub:\n    url: https://registry-1.docker.io\n"
        + textwrap.indent(textwrap.dedent(registry), "    ")
        + "  dst:\n    url: http://127.0.0.1:5002\n"
        + defaults
        + RULES
    )


def load(text: str, *, check_files: bool = False) -> Config:
    return load_config_text(text, filename="c.yaml", environ={}, check_files=check_files)


def problems(text: str, *, check_files: bool = False) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        load(text, check_files=check_files)
    return info.value.problems


def test_defaults_keep_todays_behaviour() -> None:
    hub = load(config("")).registries["hub"]
    assert hub.credentials == ()
    assert hub.quota_reserve is None
    assert hub.requests_per_second is None
    assert hub.max_retry_wait == 120.0


def test_every_key_read() -> None:
    hub = load(
        config(
            """\
            credentials:
              - {username: bot1, password: s3cret}
              - {username: bot2, password_file: /run/secrets/hub2}
            quota_reserve: 15%
            requests_per_second: 2.5
            max_retry_wait: 30s
            """
        )
    ).registries["hub"]
    assert hub.credentials == (
        AccountConfig("bot1", Secret("s3cret")),
        AccountConfig("bot2", None, "/run/secrets/hub2"),
    )
    assert hub.quota_reserve == QuotaReserve(15, percent=True)
    assert hub.requests_per_second == 2.5
    assert hub.max_retry_wait == 30.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20", QuotaReserve(20, percent=False)),
        ("'20'", QuotaReserve(20, percent=False)),
        ("0", QuotaReserve(0, percent=False)),
        ("10%", QuotaReserve(10, percent=True)),
        ("'2.5%'", QuotaReserve(2.5, percent=True)),
        ("0%", QuotaReserve(0, percent=True)),
    ],
)
def test_quota_reserve_forms(value: str, expected: QuotaReserve) -> None:
    hub = load(config(f"quota_reserve: {value}\n")).registries["hub"]
    assert hub.quota_reserve == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1", "expected a number of pulls"),
        ("100%", "a percentage from 0% to below 100%"),
        ("1.5", "expected a number of pulls"),
        ("'1.5'", "a whole number of pulls"),
        ("lots", "invalid quota_reserve 'lots'"),
        ("true", "got a boolean"),
    ],
)
def test_quota_reserve_refused(value: str, message: str) -> None:
    (p,) = problems(config(f"quota_reserve: {value}\n"))
    assert (p.line, p.key) == (4, "registries.hub.quota_reserve")
    assert message in p.message


def test_max_retry_wait_from_defaults_unless_the_registry_sets_it() -> None:
    cfg = load(config("max_retry_wait: 10m\n", defaults="defaults:\n  max_retry_wait: 45s\n"))
    assert cfg.registries["hub"].max_retry_wait == 600.0
    assert cfg.registries["dst"].max_retry_wait == 45.0


@pytest.mark.parametrize(
    ("registry", "expected"),
    [
        ("requests_per_second: 0\n", [(4, "registries.hub.requests_per_second", "more than 0")]),
        ("max_retry_wait: never\n", [(4, "registries.hub.max_retry_wait", "invalid duration")]),
        ("credentials: []\n", [(4, "registries.hub.credentials", "must not be empty")]),
        (
            "credentials:\n  - {username: a}\n",
            [(5, "registries.hub.credentials[0]", "needs a password or a password_file")],
        ),
        (
            "credentials:\n  - {username: a, password: x, password_file: /f}\n",
            [(5, "registries.hub.credentials[0].password_file", "either password or")],
        ),
        (
            "credentials:\n  - {password: x}\n",
            [(5, "registries.hub.credentials[0].username", "required key 'username'")],
        ),
        (
            "credentials:\n  - {username: a, passwd: x}\n",
            [
                (5, "registries.hub.credentials[0]", "needs a password"),
                (5, "registries.hub.credentials[0].passwd", "did you mean 'password'"),
            ],
        ),
        (
            "username: a\npassword: b\ncredentials:\n  - {username: c, password: d}\n",
            [
                (4, "registries.hub.username", "either credentials"),
                (5, "registries.hub.password", "either credentials"),
            ],
        ),
    ],
)
def test_problems_are_located(registry: str, expected: list[tuple[int, str, str]]) -> None:
    found = problems(config(registry))
    assert [(p.line, p.key) for p in found] == [(line, key) for line, key, _ in expected]
    for p, (_, _, message) in zip(found, expected, strict=True):
        assert message in p.message, p.message


def test_an_account_password_file_must_exist(tmp_path: pathlib.Path) -> None:
    text = config(f"credentials:\n  - {{username: a, password_file: {tmp_path}/nope}}\n")
    (p,) = problems(text, check_files=True)
    assert p.key == "registries.hub.credentials[0].password_file"
    assert "does not exist" in p.message
    (tmp_path / "yes").write_text("pw\n")
    text = config(f"credentials:\n  - {{username: a, password_file: {tmp_path}/yes}}\n")
    assert load(text, check_files=True).registries["hub"].credentials[0].password_file


def test_account_passwords_are_never_echoed() -> None:
    text = config("credentials:\n  - {username: a, password: hunter2, password_file: /x}\n")
    assert all("hunter2" not in str(p) for p in problems(text))
