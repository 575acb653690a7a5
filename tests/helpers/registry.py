"""Real CNCF distribution registries (Debian ``docker-registry``) as test processes."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"
HTTP_SECRET = "syncd-test-secret"  # fixed so a restarted registry keeps open uploads valid
_ACCESS_RE = re.compile(
    r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3}) (?P<bytes>\d+|-) '
    r'"[^"]*" "(?P<agent>[^"]*)"'
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Access:
    """One line of the registry's access log."""

    method: str
    path: str
    status: int
    agent: str

    @property
    def kind(self) -> str:
        """A coarse request kind: manifest_head, blob_get, upload_post, mount, ..."""
        p = self.path.split("?")[0]
        if p.rstrip("/") == "/v2":
            return "ping"
        if "/manifests/" in p:
            return f"manifest_{self.method.lower()}"
        if "/blobs/uploads" in p:
            if self.method == "POST" and "mount=" in self.path and self.status == 201:
                return "mount"
            return f"upload_{self.method.lower()}"
        if "/blobs/" in p:
            return f"blob_{self.method.lower()}"
        if p.endswith("/tags/list"):
            return "tags_list"
        if p.endswith("/_catalog"):
            return "catalog"
        if "/referrers/" in p:
            return "referrers"
        return "other"


@dataclass
class Registry:
    """A running registry: ``url``, ``host``, ``root`` (storage), and its access log."""

    port: int
    root: Path
    workdir: Path
    config: dict[str, Any]
    tls: bool = False
    ca_file: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    _log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self._log_path = self.workdir / "registry.log"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def start(self) -> None:
        cfg = self.workdir / "config.yml"
        cfg.write_text(yaml.safe_dump(self.config))
        log = self._log_path.open("ab")
        self.proc = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(cfg)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"registry exited: {self._log_path.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("registry did not start listening")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    # -- the access log --------------------------------------------------------------
    def log_text(self) -> str:
        return self._log_path.read_text(errors="replace")

    def _log_size(self) -> int:
        return self._log_path.stat().st_size if self._log_path.exists() else 0

    def settle(self, quiet: float = 0.15, limit: float = 2.0) -> None:
        """Wait until the log stops growing: the registry logs a request after answering it."""
        deadline = time.monotonic() + limit
        size = self._log_size()
        while time.monotonic() < deadline:
            time.sleep(quiet)
            now = self._log_size()
            if now == size:
                return
            size = now

    def log_mark(self) -> int:
        """An offset into the log; pass to ``accesses(since=...)`` to see only later lines."""
        self.settle()
        return self._log_size()

    def accesses(self, since: int = 0, agent: str | None = None) -> list[Access]:
        self.settle()
        with self._log_path.open("rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
        out = []
        for m in _ACCESS_RE.finditer(text):
            a = Access(m["method"], m["path"], int(m["status"]), m["agent"])
            if agent is None or agent in a.agent:
                out.append(a)
        return out

    def counts(self, since: int = 0, agent: str | None = None) -> Counter[str]:
        return Counter(a.kind for a in self.accesses(since, agent))

    # -- storage, for corrupting and inspecting -----------------------------------------
    def blob_path(self, digest: str) -> Path:
        algo, hexd = digest.split(":")
        return self.root / "docker/registry/v2/blobs" / algo / hexd[:2] / hexd / "data"


def registry_config(port: int, root: Path, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(root)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": HTTP_SECRET},
    }
    for key, value in extra.items():
        if key == "http":
            cfg["http"].update(value)
        else:
            cfg[key] = value
    return cfg


class RegistryFactory:
    """Starts registries in a temporary directory and stops them all at the end."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.started: list[Registry] = []

    def __call__(
        self,
        *,
        tls: tuple[str, str] | None = None,
        ca_file: str | None = None,
        storage_on_shm: bool = False,
        delete: bool = True,
        **extra: Any,
    ) -> Registry:
        """A started registry; ``delete=False`` turns deletes off (every DELETE of a
        manifest then answers 405 UNSUPPORTED), ``extra`` adds or replaces config keys."""
        port = free_port()
        workdir = Path(tempfile.mkdtemp(prefix=f"reg{port}-", dir=self.base))
        root = workdir / "storage"
        if storage_on_shm and Path("/dev/shm").is_dir():
            root = Path(tempfile.mkdtemp(prefix=f"syncd-reg{port}-", dir="/dev/shm"))
        root.mkdir(parents=True, exist_ok=True)
        if tls:
            # Merged, so a caller's http.tls extras (clientcas for mTLS) are kept.
            extra.setdefault("http", {}).setdefault("tls", {}).update(
                {"certificate": tls[0], "key": tls[1]}
            )
        config = registry_config(port, root, **extra)
        config["storage"].setdefault("delete", {})["enabled"] = delete
        reg = Registry(
            port,
            root,
            workdir,
            config,
            tls=bool(tls),
            ca_file=ca_file,
        )
        reg.start()
        self.started.append(reg)
        return reg

    def close(self) -> None:
        for reg in self.started:
            reg.stop()
            if str(reg.root).startswith("/dev/shm/"):
                shutil.rmtree(reg.root, ignore_errors=True)


# -- a tiny independent HTTP client for tests (not syncd's) -----------------------------
def http(
    method: str,
    url: str,
    *,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    auth: tuple[str, str] | None = None,
    context: ssl.SSLContext | None = None,
    token: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    if auth:
        h["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=30, context=context) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def manifest_raw(url: str, repo: str, ref: str, **kw: Any) -> bytes | None:
    accept = ", ".join(
        [
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        ]
    )
    status, _, body = http(
        "GET", f"{url}/v2/{repo}/manifests/{ref}", headers={"Accept": accept}, **kw
    )
    return body if status == 200 else None


def tags(url: str, repo: str, **kw: Any) -> list[str]:
    status, _, body = http("GET", f"{url}/v2/{repo}/tags/list", **kw)
    if status != 200:
        return []
    return sorted(json.loads(body).get("tags") or [])
