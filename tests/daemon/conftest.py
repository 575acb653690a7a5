"""A real ``syncd run`` process for the daemon tests, and a config writer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.registry import free_port, http

REPO = Path(__file__).resolve().parents[2]
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").is_dir() else sys.executable
TOKEN = "daemon-test-webhook-token"


def write_config(
    path: Path,
    registries: dict[str, str],
    rules: list[dict[str, Any]],
    *,
    token: str | None = TOKEN,
) -> Path:
    """Write a syncd config: ``registries`` maps names to URLs; rules are given as dicts."""
    doc: dict[str, Any] = {
        "registries": {name: {"url": url} for name, url in registries.items()},
        "rules": rules,
    }
    if token:
        doc["server"] = {"webhook_token": token}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    tmp.replace(path)  # atomic: the watcher never sees half a file
    return path


def wait_until(cond: Callable[[], object], timeout: float, what: str, step: float = 0.05) -> float:
    """Poll ``cond`` until true; returns the seconds it took, fails the test on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if cond():
            return time.monotonic() - start
        time.sleep(step)  # sleep-ok: poll interval of a bounded wait
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class DaemonProcess:
    """One daemon process; its combined output (JSON log lines) goes to ``log_path``."""

    argv: list[str]
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    returncode: int | None = field(default=None, init=False)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, env: dict[str, str] | None = None) -> DaemonProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
        return self

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            status, _, body = http("GET", self.base + path)
        except OSError:
            return 0, b""
        return status, body

    def post(self, path: str, body: bytes, *, token: str | None = TOKEN) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        status, _, payload = http("POST", self.base + path, data=body, headers=headers)
        return status, payload

    def wait_healthy(self, timeout: float = 20) -> None:
        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.output()}")
            return self.get("/healthz")[0] == 200

        wait_until(up, timeout, "/healthz")

    def wait_ready(self, timeout: float = 20) -> None:
        self.wait_healthy(timeout)
        wait_until(lambda: self.get("/readyz")[0] == 200, timeout, "/readyz")

    def metric(self, name: str, **labels: str) -> float | None:
        status, body = self.get("/metrics")
        if status != 200:
            return None
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in body.decode().splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            metric, _, rest = key.partition("{")
            got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
            if metric == name and got == want:
                return float(value)
        return None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.output().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def events(self, message: str) -> list[dict[str, Any]]:
        return [e for e in self.logs() if e.get("message", "").startswith(message)]

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then wait; the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.returncode = self.proc.wait(timeout)
        return self.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


DaemonFactory = Callable[..., DaemonProcess]


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[DaemonFactory]:
    """Start ``syncd run`` processes; any still running at the end is killed."""
    started: list[DaemonProcess] = []

    def start(
        config: Path,
        *extra: str,
        port: int | None = None,
        argv: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> DaemonProcess:
        port = port or free_port()
        argv = argv or [
            PYTHON,
            "-m",
            "syncd",
            "-c",
            str(config),
            "run",
            "--listen",
            f"127.0.0.1:{port}",
            "--log-format",
            "json",
            *extra,
        ]
        d = DaemonProcess(argv, port, tmp_path / f"daemon-{port}.log")
        started.append(d)
        return d.start(env)

    yield start
    for d in started:
        d.kill()
