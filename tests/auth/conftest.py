"""Fixtures for auth and TLS scenarios: token issuers, TLS material, syncd runs.

Registries come from ``tests/conftest.py``'s ``registries`` factory; this module adds
what they authenticate against and a way to run ``syncd`` the way operators do.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.auth import TLSMaterial, TokenIssuer, make_tls, write_htpasswd

ROOT = Path(__file__).resolve().parents[2]

# Distinct, greppable values: the redaction test looks for each of them in all output.
USERS = {
    "reader": "rd-pw-Qx7fTz",
    "writer": "wr-pw-K3mP9v",
    "admin": "ad-pw-Hn4sLw",
}
WRONG_PASSWORD = "wrong-pw-Zz81Yy"


@pytest.fixture
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSMaterial:
    """A fresh CA with server (127.0.0.1/localhost) and client certificates."""
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    return write_htpasswd(tmp_path / "htpasswd", USERS)


@pytest.fixture
def issuers(tmp_path: Path) -> Iterator[Callable[..., TokenIssuer]]:
    """A factory of started token issuers (``TokenIssuer`` keywords), stopped at the end."""
    started: list[TokenIssuer] = []

    def make(**kw: Any) -> TokenIssuer:
        kw.setdefault("users", dict(USERS))
        issuer = TokenIssuer(tmp_path / f"issuer{len(started)}", **kw).start()
        started.append(issuer)
        return issuer

    try:
        yield make
    finally:
        for issuer in started:
            issuer.stop()


@dataclass
class SyncdRun:
    """The result of one ``python -m syncd`` run."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@dataclass
class SyncdRunner:
    """Writes configs and runs the real CLI in a subprocess; remembers every run."""

    tmp_path: Path
    env: dict[str, str]
    runs: list[SyncdRun]

    def config(self, registries: dict[str, Any], rules: list[dict[str, Any]]) -> Path:
        path = self.tmp_path / f"syncd-{len(self.runs)}-{os.urandom(3).hex()}.yml"
        path.write_text(yaml.safe_dump({"registries": registries, "rules": rules}))
        return path

    def __call__(
        self, config: Path, *args: str, log_level: str = "debug", timeout: float = 120
    ) -> SyncdRun:
        argv = [sys.executable, "-m", "syncd", "-c", str(config), "--log-level", log_level]
        argv += list(args) or ["once"]
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=self.env,
            cwd=ROOT,
            timeout=timeout,
            check=False,
        )
        run = SyncdRun(argv, proc.returncode, proc.stdout, proc.stderr)
        self.runs.append(run)
        return run


@pytest.fixture
def syncd(tmp_path: Path) -> SyncdRunner:
    """Run ``syncd`` as a subprocess (``syncd(config_path, "once")``)."""
    env = dict(os.environ)
    env.pop("SYNCD_CONFIG", None)
    # An empty Docker config unless a test points DOCKER_CONFIG elsewhere.
    docker = tmp_path / "docker-empty"
    docker.mkdir(exist_ok=True)
    env["DOCKER_CONFIG"] = str(docker)
    return SyncdRunner(tmp_path, env, [])
