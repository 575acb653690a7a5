"""A replica talks to etcd over TLS with a client certificate, and with etcd's user auth."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.conftest import REPOS, TTL, Corpus, requires_etcd, status
from tests.daemon.conftest import PYTHON, DaemonProcess, wait_until
from tests.helpers.auth import make_tls
from tests.helpers.etcd import EtcdCluster, etcd_cluster
from tests.helpers.registry import free_port

pytestmark = [requires_etcd]


def _replica(tmp_path: Path, corpus: Corpus, etcd: dict[str, Any]) -> DaemonProcess:
    doc = {
        "registries": {
            "src": {"url": corpus.source.url},
            **{f"t{i}": {"url": t.url} for i, t in enumerate(corpus.targets)},
        },
        "rules": [
            {
                "name": "mirror",
                "source": "src",
                "targets": [f"t{i}" for i in range(len(corpus.targets))],
                "repositories": ["team/*"],
            }
        ],
        "cluster": {"etcd": etcd, "name": "secure-0", "lease_ttl": f"{TTL}s"},
    }
    path = tmp_path / "replica.yaml"
    path.write_text(yaml.safe_dump(doc))
    port = free_port()
    argv = [PYTHON, "-m", "syncd", "-c", str(path), "run", "--listen", f"127.0.0.1:{port}"]
    argv += ["--log-format", "json"]
    return DaemonProcess(argv, port, tmp_path / "replica.log")


@pytest.fixture
def stopper() -> Iterator[list[Any]]:
    things: list[Any] = []
    yield things
    for t in reversed(things):
        t.kill() if isinstance(t, DaemonProcess) else t.stop()


def test_tls_with_a_client_certificate(tmp_path: Path, corpus: Corpus, stopper: list[Any]) -> None:
    tls = make_tls(tmp_path / "tls")
    cluster = etcd_cluster(
        tmp_path / "etcd", 1, tls=(str(tls.server_cert), str(tls.server_key), str(tls.ca_file))
    )
    cluster.ctl_flags = [
        f"--cacert={tls.ca_file}",
        f"--cert={tls.client_cert}",
        f"--key={tls.client_key}",
    ]
    stopper.append(cluster)
    cluster.start()
    d = _replica(
        tmp_path,
        corpus,
        {
            "endpoints": cluster.endpoints,
            "ca_file": str(tls.ca_file),
            "client_cert": str(tls.client_cert),
            "client_key": str(tls.client_key),
        },
    )
    stopper.append(d.start())
    d.wait_ready(30)
    assert status(d)["members"] == ["secure-0"]
    wait_until(lambda: corpus.synced("v1", REPOS[:4]), 60, "synced over a TLS-backed cluster")
    assert "/syncd/members/secure-0" in cluster.keys("/syncd/")


def test_user_and_password(tmp_path: Path, corpus: Corpus, stopper: list[Any]) -> None:
    cluster: EtcdCluster = etcd_cluster(tmp_path / "etcd", 1)
    stopper.append(cluster)
    cluster.start()
    for args in (
        ["user", "add", "root:root-pw"],
        ["user", "add", "syncd:syncd-pw"],
        ["role", "add", "syncd"],
        ["role", "grant-permission", "syncd", "readwrite", "--prefix=true", "/syncd/"],
        ["user", "grant-role", "syncd", "syncd"],
        ["auth", "enable"],
    ):
        cluster.ctl(*args)
    secret = tmp_path / "etcd-password"
    secret.write_text("syncd-pw\n")
    d = _replica(
        tmp_path,
        corpus,
        {"endpoints": cluster.endpoints, "username": "syncd", "password_file": str(secret)},
    )
    stopper.append(d.start())
    d.wait_ready(30)
    assert status(d)["members"] == ["secure-0"]
    assert "syncd-pw" not in d.output()
