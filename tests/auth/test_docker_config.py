"""``docker_config: true``: credentials from Docker's config.json and credential helpers."""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.auth.conftest import USERS, WRONG_PASSWORD, SyncdRunner
from tests.helpers.auth import TokenIssuer, htpasswd_auth
from tests.helpers.images import image, push
from tests.helpers.registry import RegistryFactory, manifest_raw

RULE = {"name": "r", "source": "src", "targets": ["dst"], "repositories": ["team/app"]}

# A credential helper as Docker runs it: `docker-credential-syncdtest get`, server URL on
# stdin, JSON on stdout; "credentials not found" with status 1 when it has nothing.
HELPER = """#!{python}
import json, os, sys
server = sys.stdin.read().strip()
with open(os.environ["SYNCDTEST_HELPER_LOG"], "a") as log:
    log.write(server + "\\n")
store = json.load(open(os.environ["SYNCDTEST_HELPER_STORE"]))
if store.get("fail"):
    print("keychain is locked", file=sys.stderr)
    sys.exit(1)
if server not in store:
    print("credentials not found in native keychain")
    sys.exit(1)
print(json.dumps({{"ServerURL": server, "Username": store[server][0], "Secret": store[server][1]}}))
"""


class DockerSetup:
    """A DOCKER_CONFIG directory and a helper on PATH, wired into the syncd runner's env."""

    def __init__(self, tmp_path: Path, syncd: SyncdRunner) -> None:
        self.dir = tmp_path / "docker"
        self.dir.mkdir()
        bindir = tmp_path / "helper-bin"
        bindir.mkdir()
        helper = bindir / "docker-credential-syncdtest"
        helper.write_text(HELPER.format(python=sys.executable))
        helper.chmod(0o755)
        self.store_path = tmp_path / "helper-store.json"
        self.log_path = tmp_path / "helper-calls.log"
        self.store({})
        syncd.env["PATH"] = f"{bindir}{os.pathsep}{syncd.env.get('PATH', '')}"
        syncd.env["DOCKER_CONFIG"] = str(self.dir)
        syncd.env["SYNCDTEST_HELPER_STORE"] = str(self.store_path)
        syncd.env["SYNCDTEST_HELPER_LOG"] = str(self.log_path)

    def config(self, doc: dict[str, object]) -> None:
        (self.dir / "config.json").write_text(json.dumps(doc))

    def store(self, entries: dict[str, object]) -> None:
        self.store_path.write_text(json.dumps(entries))

    def calls(self) -> list[str]:
        return self.log_path.read_text().split() if self.log_path.exists() else []


@pytest.fixture
def docker(tmp_path: Path, syncd: SyncdRunner) -> DockerSetup:
    return DockerSetup(tmp_path, syncd)


def b64(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_auths_entry_and_credential_helper(
    registries: RegistryFactory, htpasswd: Path, syncd: SyncdRunner, docker: DockerSetup
) -> None:
    """Source from ``auths`` (as ``docker login`` writes it), target from a helper."""
    src = registries(auth=htpasswd_auth(htpasswd))
    dst = registries(auth=htpasswd_auth(htpasswd))
    img = image("dock")
    push(src.url, "team/app", "v1", img, auth=("writer", USERS["writer"]))
    docker.config(
        {
            "auths": {f"https://{src.host}": {"auth": b64("reader", USERS["reader"])}},
            "credHelpers": {dst.host: "syncdtest"},
        }
    )
    docker.store({dst.host: ["writer", USERS["writer"]]})
    cfg = syncd.config(
        {
            "src": {"url": src.url, "docker_config": True},
            "dst": {"url": dst.url, "docker_config": True},
        },
        [RULE],
    )
    run = syncd(cfg)
    assert run.returncode == 0, run.output
    assert manifest_raw(dst.url, "team/app", "v1", auth=("writer", USERS["writer"])) == img.raw
    # The helper was asked about the target only, and once: its answer is cached.
    assert docker.calls() == [dst.host]

    # The helper hands out a wrong password: the failure names registry and user.
    docker.store({dst.host: ["writer", WRONG_PASSWORD]})
    run = syncd(syncd.config(cfg_regs(src.url, dst.url), [{**RULE, "name": "again"}]))
    assert run.returncode == 1
    assert "authentication failed for dst (user writer)" in run.output


def cfg_regs(src_url: str, dst_url: str) -> dict[str, object]:
    return {
        "src": {"url": src_url, "docker_config": True},
        "dst": {"url": dst_url, "docker_config": True},
    }


def test_failing_helper_is_named_in_the_error(
    registries: RegistryFactory, htpasswd: Path, syncd: SyncdRunner, docker: DockerSetup
) -> None:
    src = registries()
    dst = registries(auth=htpasswd_auth(htpasswd))
    push(src.url, "team/app", "v1", image("fail"))
    docker.config({"credsStore": "syncdtest"})
    docker.store({"fail": True})
    run = syncd(
        syncd.config(
            {"src": {"url": src.url}, "dst": {"url": dst.url, "docker_config": True}}, [RULE]
        )
    )
    assert run.returncode == 1
    assert "credential helper docker-credential-syncdtest for registry dst" in run.output
    assert "keychain is locked" in run.output


def test_identity_token_from_helper_uses_oauth2_refresh_grant(
    registries: RegistryFactory,
    issuers: Callable[..., TokenIssuer],
    syncd: SyncdRunner,
    docker: DockerSetup,
) -> None:
    """A helper answering Username ``<token>`` gives an identity token (a refresh token)."""
    issuer = issuers()
    src = registries(auth=issuer.registry_auth())
    dst = registries(auth=issuer.registry_auth())
    img = image("ident")
    push(src.url, "team/app", "v1", img, token=issuer.seed_token("team/app"))
    identity = issuer.issue_refresh_token("writer")
    docker.config(
        {
            "auths": {src.host: {"auth": b64("reader", USERS["reader"])}},
            "credHelpers": {dst.host: "syncdtest"},
        }
    )
    docker.store({dst.host: ["<token>", identity]})
    run = syncd(syncd.config(cfg_regs(src.url, dst.url), [RULE]))
    assert run.returncode == 0, run.output
    assert manifest_raw(dst.url, "team/app", "v1", token=issuer.seed_token("team/app")) == img.raw
    assert issuer.count(method="POST", grant_type="refresh_token", account="writer") >= 1
    # the writer's password was never used: only the identity token
    assert issuer.count(account="writer", grant_type="password") == 0
    assert issuer.count(account="writer", grant_type="basic") == 0

    # A revoked identity token: the failure says so.
    issuer.revoke_refresh_tokens()
    run = syncd(syncd.config(cfg_regs(src.url, dst.url), [{**RULE, "name": "again"}]))
    assert run.returncode == 1
    assert "authentication failed for dst (identity token)" in run.output
    assert "invalid_grant" in run.output
