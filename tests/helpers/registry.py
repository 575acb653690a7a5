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
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"
HTTP_SECRET = "syncd-test-secret"
# User-Agent of the requests ``Registry.settle`` sends to mark a point in the access log.
MARK_AGENT = "syncd-test-mark"  # fixed so a restarted registry keeps open uploads valid
_ACCESS_RE = re.compile(
    r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3}) (?P<bytes>\d+|-) '
    r'"[^"]*" "(?P<agent>[^"]*)"'
)


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_started(
    proc: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    what: str,
    output: Callable[[], str],
    timeout: float = 15,
) -> None:
    """Wait until a process we started is ``ready`` (listening, or a log line), failing at
    once with its output if it exits first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {output()[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start in {timeout}s: {output()[-2000:]}")
        time.sleep(0.05)  # sleep-ok: poll interval of a bounded wait


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 5) -> None:
    """SIGTERM a process we started, SIGKILL it if it outlives ``grace`` seconds."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def kill_process(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL a process we started and its group (a crash, not a shutdown)."""
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


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
        if p.endswith("/auth/token"):
            return "token"  # zuul-registry's token endpoint, on the registry itself
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
    # Credentials syncd needs to push here (None: the registry is open).
    username: str | None = None
    password: str | None = None
    _log_path: Path = field(init=False)
    _marks: int = field(init=False, default=0)
    implementation = "distribution"

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
        wait_started(
            self.proc,
            lambda: listening(self.port),
            "registry",
            lambda: self._log_path.read_text(errors="replace"),
        )

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def kill(self) -> None:
        kill_process(self.proc)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    # -- the access log --------------------------------------------------------------
    def log_text(self) -> str:
        return self._log_path.read_text(errors="replace")

    def _log_size(self) -> int:
        return self._log_path.stat().st_size if self._log_path.exists() else 0

    def settle(self, limit: float = 5.0) -> None:
        """Wait until every request answered so far is in the log.

        The registry writes a line just after answering, so "the pass has ended" does not
        yet mean "its lines are logged". A marker request sent now is logged after all of
        them: once its line is there, so are theirs (a positive event, not a quiet spell).
        """
        if self.proc is None or self.proc.poll() is not None:
            return  # a stopped registry logs nothing more
        self._marks += 1
        mark = f"{MARK_AGENT}/{self._marks}"
        context = None
        if self.tls:
            # Only a marker for our own loopback registry: its certificate is beside the point.
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        try:
            http("GET", f"{self.url}/v2/", headers={"User-Agent": mark}, context=context)
        except (OSError, ssl.SSLError):
            # A registry that wants a client certificate refuses the marker before logging
            # it; a caller of such a registry waits on its own condition.
            return
        deadline = time.monotonic() + limit
        needle = f'"{mark}"'.encode()
        while needle not in self._log_path.read_bytes():
            if time.monotonic() > deadline:
                raise AssertionError(f"the registry did not log marker {mark} in {limit}s")
            time.sleep(0.01)  # sleep-ok: poll interval of a bounded wait on the marker line

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
            if a.agent.startswith(MARK_AGENT):
                continue
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
# Registries (host:port) that want a Bearer token for everything (zuul-registry): the
# helpers log in at the realm of their challenge with these credentials, as a client does.
_BEARER_LOGINS: dict[str, tuple[str, str]] = {}
_BEARER_TOKENS: dict[str, str] = {}


def register_bearer_login(host: str, username: str, password: str) -> None:
    _BEARER_LOGINS[host] = (username, password)
    _BEARER_TOKENS.pop(host, None)


def forget_bearer_login(host: str) -> None:
    """The registry at ``host`` is gone; a later one on that port starts afresh."""
    _BEARER_LOGINS.pop(host, None)
    _BEARER_TOKENS.pop(host, None)


def _bearer_token(url: str, challenge: str) -> str | None:
    host = urllib.parse.urlsplit(url).netloc
    login = _BEARER_LOGINS.get(host)
    m = re.search(r'realm="([^"]+)"', challenge)
    if login is None or m is None or not challenge.lower().startswith("bearer"):
        return None
    repo = re.match(r".*?/v2/(.+?)/(?:manifests|blobs|tags)/", url)
    scope = f"repository:{repo.group(1) if repo else 'any'}:pull,push"
    realm = f"{m.group(1)}?{urllib.parse.urlencode({'scope': scope})}"
    status, _, body = http("GET", realm, auth=login)
    if status != 200:
        return None
    token = str(json.loads(body)["token"])
    _BEARER_TOKENS[host] = token
    return token


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
    host = urllib.parse.urlsplit(url).netloc
    if not token and not auth and host in _BEARER_TOKENS:
        token = _BEARER_TOKENS[host]
    if token:
        h["Authorization"] = f"Bearer {token}"
    if auth:
        h["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=30, context=context) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        challenge = e.headers.get("WWW-Authenticate", "")
        if e.code == 401 and not auth and host in _BEARER_LOGINS:
            fresh = _bearer_token(url, challenge)
            if fresh and fresh != token:
                return http(method, url, data=data, headers=headers, context=context, token=fresh)
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
