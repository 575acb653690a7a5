"""Credential sources: precedence, password_file rotation, Docker config and helpers.

The credential helper is a real executable (a tiny Python script on PATH) run the way
Docker runs one: ``docker-credential-<name> get`` with the server URL on stdin.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path

import pytest

from syncd.config.schema import RegistryConfig
from syncd.errors import AuthError
from syncd.registry.credentials import (
    Credentials,
    DockerConfigSource,
    PasswordFileSource,
    StaticSource,
    credential_source,
    docker_config_path,
    helper_server_url,
    normalize_host,
)
from syncd.secret import Secret

HELPER = """#!{python}
import json, os, sys, time
server = sys.stdin.read().strip()
state = os.environ["FAKE_HELPER_DIR"]
with open(os.path.join(state, "calls"), "a") as f:
    f.write(sys.argv[0].rsplit("-", 1)[-1] + " " + " ".join(sys.argv[1:]) + " " + server + "\\n")
mode = open(os.path.join(state, "mode")).read().strip() if os.path.exists(
    os.path.join(state, "mode")) else "ok"
if mode == "sleep":
    time.sleep(30)  # sleep-ok: a credential helper that hangs is the scenario
if mode == "fail":
    print("backend exploded", file=sys.stderr)
    sys.exit(3)
if mode == "garbage":
    print("{{not json s3cret-garbage")
    sys.exit(0)
store = json.load(open(os.path.join(state, "store.json")))
if server not in store:
    print("credentials not found in native keychain")
    sys.exit(1)
user, secret = store[server]
print(json.dumps({{"ServerURL": server, "Username": user, "Secret": secret}}))
"""


@pytest.fixture
def helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Installs ``docker-credential-test`` and ``docker-credential-store`` on PATH.

    Returns the helper's state directory: ``store.json`` maps server URL to
    [Username, Secret], ``mode`` switches to failures, ``calls`` logs each run.
    """
    bindir = tmp_path / "bin"
    state = tmp_path / "helper-state"
    bindir.mkdir()
    state.mkdir()
    for name in ("test", "store"):
        script = bindir / f"docker-credential-{name}"
        script.write_text(HELPER.format(python=sys.executable))
        script.chmod(0o755)
    (state / "store.json").write_text("{}")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_HELPER_DIR", str(state))
    return state


def store(state: Path, entries: dict[str, tuple[str, str]]) -> None:
    (state / "store.json").write_text(json.dumps(entries))


def calls(state: Path) -> list[str]:
    path = state / "calls"
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def docker_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "dockercfg"
    d.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(d))
    return d


def write_config(docker_dir: Path, doc: dict[str, object]) -> None:
    path = docker_dir / "config.json"
    path.write_text(json.dumps(doc))
    # Bump mtime explicitly: two writes within one filesystem tick must still differ.
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def b64(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def reg(url: str = "https://127.0.0.1:5000", **kw: object) -> RegistryConfig:
    return RegistryConfig(name="r", url=url, **kw)  # type: ignore[arg-type]


# -- hosts -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("server", "host"),
    [
        ("127.0.0.1:5000", "127.0.0.1:5000"),
        ("https://127.0.0.1:5000", "127.0.0.1:5000"),
        ("http://127.0.0.1:5000/v2/", "127.0.0.1:5000"),
        ("Registry.Example.COM", "registry.example.com"),
        ("docker.io", "docker.io"),
        ("index.docker.io", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("https://index.docker.io/v1/", "docker.io"),
    ],
)
def test_normalize_host(server: str, host: str) -> None:
    assert normalize_host(server) == host


def test_helper_server_url_uses_docker_hub_legacy_key() -> None:
    assert helper_server_url("docker.io") == "https://index.docker.io/v1/"
    assert helper_server_url("127.0.0.1:5000") == "127.0.0.1:5000"


def test_docker_config_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert docker_config_path({"DOCKER_CONFIG": "/x"}) == Path("/x/config.json")
    assert docker_config_path({"HOME": str(tmp_path)}) == tmp_path / ".docker/config.json"


# -- precedence ------------------------------------------------------------------------
async def test_precedence_inline_then_file_then_docker_then_anonymous(
    tmp_path: Path, docker_dir: Path
) -> None:
    pw = tmp_path / "pw"
    pw.write_text("from-file\n")
    write_config(docker_dir, {"auths": {"127.0.0.1:5000": {"auth": b64("d", "from-docker")}}})

    everything = reg(
        username="u", password=Secret("inline"), password_file=str(pw), docker_config=True
    )
    src = credential_source(everything)
    assert isinstance(src, StaticSource)
    assert await src.get() == Credentials("u", Secret("inline"))

    src = credential_source(reg(username="u", password_file=str(pw), docker_config=True))
    assert isinstance(src, PasswordFileSource)
    assert await src.get() == Credentials("u", Secret("from-file"))

    src = credential_source(reg(docker_config=True))
    assert isinstance(src, DockerConfigSource)
    assert await src.get() == Credentials("d", Secret("from-docker"))

    anon = await credential_source(reg()).get()
    assert anon.anonymous and anon.username is None


# -- password_file ---------------------------------------------------------------------
async def test_password_file_is_reread_when_rotated(tmp_path: Path) -> None:
    pw = tmp_path / "secret"
    pw.write_text("first-token\n")
    src = PasswordFileSource("r", "bot", str(pw))
    assert (await src.get()).password == Secret("first-token")
    assert (await src.get()).password == Secret("first-token")

    # Rotation by rewrite in place (mtime/size change)...
    pw.write_text("second-token-longer\n")
    assert (await src.get()).password == Secret("second-token-longer")

    # ...and by atomic rename, as Kubernetes does with its symlink swap (inode change),
    # even with the same size and mtime as before.
    st = pw.stat()
    new = tmp_path / "secret.new"
    new.write_text("third-token-longer!\n")
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    new.replace(pw)
    assert (await src.get()).password == Secret("third-token-longer!")


async def test_password_file_missing_is_an_auth_error_naming_the_file(tmp_path: Path) -> None:
    src = PasswordFileSource("r", "bot", str(tmp_path / "absent"))
    with pytest.raises(AuthError, match=r"password_file .*absent"):
        await src.get()


# -- docker config: auths --------------------------------------------------------------
@pytest.mark.parametrize(
    "key", ["127.0.0.1:5000", "https://127.0.0.1:5000", "http://127.0.0.1:5000/v1/"]
)
async def test_auths_match_host_spellings(docker_dir: Path, key: str) -> None:
    write_config(docker_dir, {"auths": {key: {"auth": b64("alice", "pa:ss")}}})
    creds = await credential_source(reg(docker_config=True)).get()
    # Only the first colon separates user from password.
    assert creds == Credentials("alice", Secret("pa:ss"))


@pytest.mark.parametrize(
    "url", ["https://docker.io", "https://index.docker.io", "registry-1.docker.io"]
)
async def test_docker_hub_aliases_find_the_legacy_entry(docker_dir: Path, url: str) -> None:
    write_config(docker_dir, {"auths": {"https://index.docker.io/v1/": {"auth": b64("h", "p")}}})
    creds = await credential_source(reg(url, docker_config=True)).get()
    assert creds == Credentials("h", Secret("p"))


async def test_auths_identity_token_and_separate_fields(docker_dir: Path) -> None:
    write_config(
        docker_dir,
        {
            "auths": {
                "127.0.0.1:5000": {"auth": b64("alice", ""), "identitytoken": "idtok"},
                "127.0.0.1:6000": {"username": "bob", "password": "bobpw"},
            }
        },
    )
    creds = await credential_source(reg(docker_config=True)).get()
    assert creds.identity_token == Secret("idtok") and creds.password is None
    assert creds.username == "alice"
    creds = await credential_source(reg("https://127.0.0.1:6000", docker_config=True)).get()
    assert creds == Credentials("bob", Secret("bobpw"))


async def test_no_entry_or_no_file_is_anonymous(docker_dir: Path) -> None:
    src = credential_source(reg(docker_config=True))
    assert (await src.get()).anonymous  # no config.json at all
    write_config(docker_dir, {"auths": {"other:1": {"auth": b64("x", "y")}}})
    assert (await src.get()).anonymous


async def test_config_file_change_is_picked_up(docker_dir: Path) -> None:
    write_config(docker_dir, {"auths": {"127.0.0.1:5000": {"auth": b64("a", "one")}}})
    src = credential_source(reg(docker_config=True))
    assert (await src.get()).password == Secret("one")
    write_config(docker_dir, {"auths": {"127.0.0.1:5000": {"auth": b64("a", "two")}}})
    assert (await src.get()).password == Secret("two")


@pytest.mark.parametrize(
    "text",
    [
        '{"auths": {"127.0.0.1:5000": {"auth": "sup3r-s3cret"',  # truncated JSON
        '{"auths": {"127.0.0.1:5000": {"auth": "c3VwM3ItczNjcmV0"}}}',  # no colon inside
    ],
)
async def test_broken_config_errors_do_not_echo_secrets(docker_dir: Path, text: str) -> None:
    (docker_dir / "config.json").write_text(text)
    with pytest.raises(AuthError) as info:
        await credential_source(reg(docker_config=True)).get()
    assert "s3cret" not in str(info.value) and "c3VwM3" not in str(info.value)
    assert "docker config" in str(info.value)


# -- docker config: helpers ------------------------------------------------------------
async def test_cred_helper_is_run_with_server_url_and_cached(
    docker_dir: Path, helper: Path
) -> None:
    write_config(
        docker_dir,
        {
            "credHelpers": {"127.0.0.1:5000": "test"},
            "auths": {"127.0.0.1:5000": {"auth": b64("ignored", "ignored")}},
        },
    )
    store(helper, {"127.0.0.1:5000": ("helper-user", "helper-secret")})
    src = credential_source(reg(docker_config=True))
    assert await src.get() == Credentials("helper-user", Secret("helper-secret"))
    assert await src.get() == Credentials("helper-user", Secret("helper-secret"))
    assert calls(helper) == ["test get 127.0.0.1:5000"]  # cached: run once

    src.invalidate()
    store(helper, {"127.0.0.1:5000": ("helper-user", "rotated")})
    assert (await src.get()).password == Secret("rotated")
    assert len(calls(helper)) == 2


async def test_cred_helper_token_username_means_identity_token(
    docker_dir: Path, helper: Path
) -> None:
    write_config(docker_dir, {"credHelpers": {"docker.io": "test"}})
    store(helper, {"https://index.docker.io/v1/": ("<token>", "refresh-me")})
    creds = await credential_source(reg("https://index.docker.io", docker_config=True)).get()
    assert creds == Credentials(None, None, Secret("refresh-me"))
    assert calls(helper) == ["test get https://index.docker.io/v1/"]


async def test_creds_store_then_auths_fallback(docker_dir: Path, helper: Path) -> None:
    write_config(
        docker_dir,
        {
            "credsStore": "store",
            "auths": {
                "127.0.0.1:5000": {},  # what `docker login` leaves next to a store
                "127.0.0.1:6000": {"auth": b64("plain", "plainpw")},
            },
        },
    )
    store(helper, {"127.0.0.1:5000": ("s", "from-store")})
    assert await credential_source(reg(docker_config=True)).get() == Credentials(
        "s", Secret("from-store")
    )
    # The store has nothing for :6000 ("credentials not found"): auths is used.
    other = credential_source(reg("https://127.0.0.1:6000", docker_config=True))
    assert await other.get() == Credentials("plain", Secret("plainpw"))
    assert calls(helper) == ["store get 127.0.0.1:5000", "store get 127.0.0.1:6000"]


async def test_cred_helpers_entry_wins_over_creds_store(docker_dir: Path, helper: Path) -> None:
    write_config(
        docker_dir, {"credsStore": "store", "credHelpers": {"https://127.0.0.1:5000": "test"}}
    )
    store(helper, {"127.0.0.1:5000": ("u", "pw")})
    assert (await credential_source(reg(docker_config=True)).get()).username == "u"
    assert [c.split()[0] for c in calls(helper)] == ["test"]


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("fail", r"docker-credential-test for registry r .*status 3: backend exploded"),
        ("garbage", r"docker-credential-test for registry r .*answer is not JSON"),
    ],
)
async def test_helper_failures_name_helper_and_registry_not_secrets(
    docker_dir: Path, helper: Path, mode: str, message: str
) -> None:
    write_config(docker_dir, {"credHelpers": {"127.0.0.1:5000": "test"}})
    (helper / "mode").write_text(mode)
    with pytest.raises(AuthError, match=message) as info:
        await credential_source(reg(docker_config=True)).get()
    assert "s3cret" not in str(info.value)


async def test_helper_missing_and_timeout(docker_dir: Path, helper: Path) -> None:
    write_config(docker_dir, {"credHelpers": {"127.0.0.1:5000": "nonexistent"}})
    with pytest.raises(AuthError, match="docker-credential-nonexistent not found on PATH"):
        await credential_source(reg(docker_config=True)).get()

    write_config(docker_dir, {"credHelpers": {"127.0.0.1:5000": "test"}})
    (helper / "mode").write_text("sleep")
    src = DockerConfigSource("r", "127.0.0.1:5000", helper_timeout=0.5)
    with pytest.raises(AuthError, match=r"docker-credential-test .* timed out after 0.5s"):
        await src.get()


def test_credentials_repr_masks_secrets() -> None:
    creds = Credentials("u", Secret("hunter2"), Secret("idtok"))
    assert "hunter2" not in repr(creds) and "idtok" not in repr(creds)
    assert "hunter2" not in repr(StaticSource("r", creds))
