"""A real etcd cluster (Debian ``etcd-server`` 3.4) on free loopback ports, stopped by PID."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.registry import free_port, kill_process, stop_process

ETCD_BIN = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL_BIN = shutil.which("etcdctl") or "/usr/bin/etcdctl"


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    initial_cluster: str = ""
    proc: subprocess.Popen[bytes] | None = None
    # (certificate, key, CA): clients speak https and must show a certificate of the CA.
    tls: tuple[str, str, str] | None = None

    @property
    def client_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self) -> None:
        argv = [
            ETCD_BIN,
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            self.client_url,
            "--advertise-client-urls",
            self.client_url,
            "--listen-peer-urls",
            self.peer_url,
            "--initial-advertise-peer-urls",
            self.peer_url,
            "--initial-cluster",
            self.initial_cluster,
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            "syncd-test",
            # Short timings: a lost member or leader is noticed in well under a second.
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
            "--logger",
            "zap",
            "--log-level",
            "warn",
        ]
        if self.tls:
            cert, key, ca = self.tls
            argv += ["--cert-file", cert, "--key-file", key, "--trusted-ca-file", ca]
            argv += ["--client-cert-auth"]
        log = self.log_path.open("ab")
        # Debian's etcd 3.4 on amd64 needs no ETCD_UNSUPPORTED_ARCH; the environment is clean.
        self.proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.client_port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        stop_process(self.proc, grace=10)
        self.proc = None

    def kill(self) -> None:
        kill_process(self.proc)
        self.proc = None


@dataclass
class EtcdCluster:
    members: list[EtcdMember] = field(default_factory=list)
    # etcdctl's TLS flags and credentials, for a cluster that wants them
    ctl_flags: list[str] = field(default_factory=list)

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def start(self, timeout: float = 20) -> EtcdCluster:
        for m in self.members:
            m.start()
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 20) -> None:
        """Until a quorum answers a linearizable read (a leader is elected)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.members:
                if m.proc is not None and m.proc.poll() is not None:
                    raise RuntimeError(f"etcd {m.name} exited: {m.log_path.read_text()[-2000:]}")
            if self.ctl("endpoint", "health", check=False).returncode == 0:
                return
            time.sleep(0.1)  # sleep-ok: poll interval of a bounded wait
        raise RuntimeError("etcd cluster did not become healthy")

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        live = [m.client_url for m in self.members if m.proc is not None] or self.endpoints
        return subprocess.run(
            [
                ETCDCTL_BIN,
                "--endpoints",
                ",".join(live),
                "--command-timeout=2s",
                *self.ctl_flags,
                *args,
            ],
            capture_output=True,
            text=True,
            check=check,
            env={**os.environ, "ETCDCTL_API": "3"},
            timeout=10,
        )

    def keys(self, prefix: str) -> list[str]:
        out = self.ctl("get", "--prefix", "--keys-only", "-w", "json", prefix).stdout
        doc = json.loads(out)
        import base64

        return sorted(base64.b64decode(kv["key"]).decode() for kv in doc.get("kvs", []))

    def stop(self) -> None:
        for m in self.members:
            m.stop()


def etcd_cluster(
    base: Path, size: int = 3, *, tls: tuple[str, str, str] | None = None
) -> EtcdCluster:
    members = []
    for i in range(size):
        d = base / f"etcd-{i}"
        d.mkdir(parents=True, exist_ok=True)
        members.append(
            EtcdMember(f"m{i}", free_port(), free_port(), d / "data", d / "etcd.log", tls=tls)
        )
    initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
    for m in members:
        m.initial_cluster = initial
    return EtcdCluster(members)
