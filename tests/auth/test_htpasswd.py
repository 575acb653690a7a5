"""Basic auth (distribution ``auth.htpasswd``): inline passwords and rotating password files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from syncd.config.schema import RegistryConfig
from syncd.errors import AuthError
from syncd.registry.auth import may_send_credentials
from syncd.registry.pool import ClientPool
from syncd.secret import Secret
from tests.auth.conftest import USERS, WRONG_PASSWORD, SyncdRunner
from tests.helpers.auth import htpasswd_auth
from tests.helpers.images import image, push
from tests.helpers.registry import RegistryFactory, manifest_raw

RULE = {"name": "r", "source": "src", "targets": ["dst"], "repositories": ["team/app"]}
WRITER = ("writer", USERS["writer"])


def test_sync_with_right_and_wrong_passwords(
    registries: RegistryFactory, htpasswd: Path, syncd: SyncdRunner
) -> None:
    src = registries(auth=htpasswd_auth(htpasswd))
    dst = registries(auth=htpasswd_auth(htpasswd))
    img = image("basic")
    push(src.url, "team/app", "v1", img, auth=WRITER)
    reader = {"username": "reader", "password": USERS["reader"]}

    run = syncd(
        syncd.config(
            {
                "src": {"url": src.url, **reader},
                "dst": {"url": dst.url, "username": "writer", "password": WRONG_PASSWORD},
            },
            [RULE],
        )
    )
    assert run.returncode == 1
    # who failed where, with the registry's own error code
    assert "authentication failed for dst (user writer): Basic challenge" in run.output
    assert manifest_raw(dst.url, "team/app", "v1", auth=WRITER) is None

    run = syncd(syncd.config({"src": {"url": src.url}, "dst": {"url": dst.url}}, [RULE]))
    assert run.returncode == 1
    assert "authentication failed for src (anonymous): UNAUTHORIZED" in run.output

    run = syncd(
        syncd.config(
            {
                "src": {"url": src.url, **reader},
                "dst": {"url": dst.url, "username": "writer", "password": USERS["writer"]},
            },
            [RULE],
        )
    )
    assert run.returncode == 0, run.output
    assert manifest_raw(dst.url, "team/app", "v1", auth=WRITER) == img.raw


def test_password_from_environment_variable(
    registries: RegistryFactory, htpasswd: Path, syncd: SyncdRunner
) -> None:
    src = registries()
    dst = registries(auth=htpasswd_auth(htpasswd))
    img = image("env")
    push(src.url, "team/app", "v1", img)
    syncd.env["DST_TOKEN"] = USERS["writer"]
    cfg = syncd.config(
        {
            "src": {"url": src.url},
            "dst": {"url": dst.url, "username": "writer", "password": "${DST_TOKEN}"},
        },
        [RULE],
    )
    run = syncd(cfg)
    assert run.returncode == 0, run.output
    assert manifest_raw(dst.url, "team/app", "v1", auth=WRITER) == img.raw


def test_password_file(
    registries: RegistryFactory, htpasswd: Path, syncd: SyncdRunner, tmp_path: Path
) -> None:
    src = registries()
    dst = registries(auth=htpasswd_auth(htpasswd))
    img = image("file")
    push(src.url, "team/app", "v1", img)
    secret = tmp_path / "dst-password"
    secret.write_text(USERS["writer"] + "\n")
    cfg = syncd.config(
        {
            "src": {"url": src.url},
            "dst": {"url": dst.url, "username": "writer", "password_file": str(secret)},
        },
        [RULE],
    )
    run = syncd(cfg)
    assert run.returncode == 0, run.output
    assert manifest_raw(dst.url, "team/app", "v1", auth=WRITER) == img.raw


async def test_rotated_password_file_is_used_without_restart(
    registries: RegistryFactory, htpasswd: Path, tmp_path: Path
) -> None:
    """One long-lived client: the file changes under it and the next request logs in anew."""
    reg = registries(auth=htpasswd_auth(htpasswd))
    push(reg.url, "team/app", "v1", image("rot"), auth=WRITER)
    secret = tmp_path / "rotating"
    secret.write_text(WRONG_PASSWORD)
    config = RegistryConfig(name="r", url=reg.url, username="writer", password_file=str(secret))
    async with ClientPool({"r": config}) as pool:
        client = pool.client("r").with_retries(1)
        with pytest.raises(AuthError, match=r"authentication failed for r \(user writer\)"):
            await client.tags_list("team/app")
        # The operator (or a secret manager) rotates the file in place.
        secret.write_text(USERS["writer"] + "\n")
        st = secret.stat()
        os.utime(secret, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        assert await client.tags_list("team/app") == ["v1"]


async def test_basic_credentials_are_not_sent_over_plain_http_to_a_remote_host() -> None:
    """No socket needed: the decision is made before any request is built."""
    remote = RegistryConfig(
        name="remote",
        url="http://registry.example.com:5000",
        username="u",
        password=Secret("p-not-sent"),
    )
    allowed = RegistryConfig(
        name="allowed",
        url="http://registry.example.com:5000",
        username="u",
        password=Secret("p-sent"),
        allow_insecure_auth=True,
    )
    local = RegistryConfig(
        name="local", url="http://127.0.0.1:5000", username="u", password=Secret("p-local")
    )
    async with ClientPool({"remote": remote, "allowed": allowed, "local": local}) as pool:
        headers = {}
        for name in ("remote", "allowed", "local"):
            auth = pool.client(name).transport.auth
            auth.learn('Basic realm="x"')
            headers[name] = await auth.header(pool.client(name).transport.session, [])
    assert headers["remote"] == {}
    assert headers["allowed"]["Authorization"].startswith("Basic ")
    assert headers["local"]["Authorization"].startswith("Basic ")


@pytest.mark.parametrize(
    ("url", "allow_insecure", "expected"),
    [
        ("https://auth.example.com/token", False, True),
        ("http://127.0.0.1:5000/token", False, True),
        ("http://127.8.9.10/token", False, True),
        ("http://localhost:8080/token", False, True),
        ("http://[::1]:8080/token", False, True),
        ("http://auth.example.com/token", False, False),
        ("http://10.0.0.5:5000/token", False, False),
        ("http://auth.example.com/token", True, True),
    ],
)
def test_credentials_over_plain_http_only_to_loopback_or_when_allowed(
    url: str, allow_insecure: bool, expected: bool
) -> None:
    assert may_send_credentials(url, allow_insecure=allow_insecure) is expected
