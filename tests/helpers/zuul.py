"""Real zuul-registry processes: a second, independent registry implementation.

zuul-registry (PyPI, CherryPy) lives in its own venv (``.venv-zuul``, made by
``scripts/bootstrap``) because its dependencies (openstacksdk, boto3, cherrypy) have no
business in syncd's; ``zuul_serve.py`` runs its ``main`` there. It always wants a Bearer
token, also for ``GET /v2/``; pulls are anonymous, pushes need the Basic credentials of a
``write`` user at its token endpoint. With ``-d`` CherryPy logs every request in Apache
combined format on stderr, which the access-log helpers of ``tests.helpers.registry``
read like distribution's.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from tests.helpers.registry import (
    Registry,
    forget_bearer_login,
    free_port,
    register_bearer_login,
    wait_started,
)

_ROOT = Path(__file__).resolve().parents[2]
ZUUL_USER = "pusher"
ZUUL_PASSWORD = "zuul-test-pw"  # the test's own throwaway credential


_SERVE = str(Path(__file__).with_name("zuul_serve.py"))


def zuul_python() -> str | None:
    """The interpreter of zuul-registry's venv: ``$SYNCD_ZUUL_PYTHON``, else ``.venv-zuul``."""
    for candidate in (os.environ.get("SYNCD_ZUUL_PYTHON"), str(_ROOT / ".venv-zuul/bin/python")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


class ZuulRegistry(Registry):
    """A running zuul-registry with the interface of ``Registry`` (url, stop, kill, log)."""

    implementation = "zuul"

    def start(self) -> None:
        python = zuul_python()
        if python is None:
            raise RuntimeError("zuul-registry is not installed: run scripts/bootstrap")
        cfg = self.workdir / "config.yml"
        cfg.write_text(yaml.safe_dump(self.config))
        log = self._log_path.open("ab")
        self.proc = subprocess.Popen(
            # -d: its debug mode is the one that logs every request.
            [python, _SERVE, "-c", str(cfg), "-d", "serve"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        # CherryPy binds only after importing openstacksdk and boto3 (about a second); the
        # "Serving on" line is the event that it listens.
        wait_started(
            self.proc,
            lambda: "ENGINE Serving on" in self.log_text(),
            "zuul-registry",
            self.log_text,
            timeout=30,
        )

    def blob_path(self, digest: str) -> Path:
        hexd = digest.split(":", 1)[1]
        return self.root / "_local/blobs" / f"sha256:{hexd}" / "data"


def zuul_config(port: int, root: Path) -> dict[str, Any]:
    return {
        "registry": {
            "address": "127.0.0.1",
            "port": port,
            "public-url": f"http://127.0.0.1:{port}",
            "secret": "syncd-test-secret",
            "users": [{"name": ZUUL_USER, "pass": ZUUL_PASSWORD, "access": "write"}],
            "storage": {"driver": "filesystem", "root": str(root)},
        }
    }


class ZuulFactory:
    """Starts zuul-registries in a temporary directory and stops them all at the end."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.started: list[ZuulRegistry] = []

    def __call__(self) -> ZuulRegistry:
        port = free_port()
        workdir = Path(tempfile.mkdtemp(prefix=f"zuul{port}-", dir=self.base))
        root = workdir / "storage"
        root.mkdir(parents=True)
        reg = ZuulRegistry(port, root, workdir, zuul_config(port, root))
        reg.username, reg.password = ZUUL_USER, ZUUL_PASSWORD
        register_bearer_login(reg.host, ZUUL_USER, ZUUL_PASSWORD)
        reg.start()
        self.started.append(reg)
        return reg

    def close(self) -> None:
        for reg in self.started:
            reg.stop()
            forget_bearer_login(reg.host)
