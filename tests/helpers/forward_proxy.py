"""A real forward proxy (Debian ``tinyproxy``) in the foreground on loopback.

Each request it forwards is a ``Request (file descriptor N): GET http://…`` line of its
log at ``LogLevel Info``; counting those lines is how tests prove what went through it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.registry import (
    free_port,
    kill_process,
    listening,
    stop_process,
    wait_started,
)

TINYPROXY_BIN = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
_REQUEST_RE = re.compile(r"Request \(file descriptor \d+\): (?P<method>[A-Z]+) (?P<url>\S+)")


@dataclass(frozen=True)
class Proxied:
    method: str
    url: str


@dataclass
class ForwardProxy:
    """A running tinyproxy: ``url`` (no credentials), ``requests()``, ``stop()``, ``kill()``."""

    port: int
    workdir: Path
    basic_auth: tuple[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / "tinyproxy.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_with(self, user: str, password: str) -> str:
        return f"http://{user}:{password}@127.0.0.1:{self.port}"

    def start(self) -> None:
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Allow 127.0.0.1",
            "Timeout 60",
            "MaxClients 64",
            f'LogFile "{self.log_path}"',
            "LogLevel Info",
            f'PidFile "{self.workdir / "tinyproxy.pid"}"',
            "DisableViaHeader Yes",
        ]
        if self.basic_auth:
            lines.append(f"BasicAuth {self.basic_auth[0]} {self.basic_auth[1]}")
        cfg = self.workdir / "tinyproxy.conf"
        cfg.write_text("\n".join(lines) + "\n")
        out = (self.workdir / "stdout.log").open("ab")
        self.proc = subprocess.Popen(
            [TINYPROXY_BIN, "-d", "-c", str(cfg)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        wait_started(
            self.proc,
            lambda: listening(self.port),
            "tinyproxy",
            lambda: (self.workdir / "stdout.log").read_text(errors="replace") + self.log_text(),
        )

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def kill(self) -> None:
        kill_process(self.proc)
        self.proc = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def requests(self, contains: str = "") -> list[Proxied]:
        """Requests forwarded so far (tinyproxy logs each as it reads it)."""
        out = [Proxied(m["method"], m["url"]) for m in _REQUEST_RE.finditer(self.log_text())]
        return [r for r in out if contains in r.url]


class ForwardProxyFactory:
    """Starts tinyproxies in a temporary directory and stops them all at the end."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.started: list[ForwardProxy] = []

    def __call__(self, *, basic_auth: tuple[str, str] | None = None) -> ForwardProxy:
        port = free_port()
        workdir = Path(tempfile.mkdtemp(prefix=f"proxy{port}-", dir=self.base))
        proxy = ForwardProxy(port, workdir, basic_auth)
        proxy.start()
        self.started.append(proxy)
        return proxy

    def close(self) -> None:
        for proxy in self.started:
            proxy.stop()
