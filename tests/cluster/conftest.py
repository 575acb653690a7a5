"""A 3-member etcd cluster, a corpus of many repositories, and `syncd run` replicas."""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.daemon.conftest import PYTHON, TOKEN, DaemonProcess, wait_until  # noqa: F401
from tests.helpers.etcd import ETCD_BIN, EtcdCluster, etcd_cluster
from tests.helpers.images import image, push
from tests.helpers.registry import Registry, RegistryFactory, free_port, tags

TTL = 3  # seconds: short, so that expiry and takeover fit in a test
INTERVAL = 2.0
REPOS = [f"team/app{i:02d}" for i in range(16)]
AGENT = "syncd/0.1.0 (replica {})"

# distribution logs each response with a nanosecond timestamp (logrus), method, URI,
# user agent and status: the timeline of who wrote which tag.
_RESPONSE_RE = re.compile(
    r'time="(?P<time>[^"]+)".*msg="response completed".*http\.request\.method=(?P<method>\S+)'
    r".*http\.request\.uri=(?P<uri>\S+).*http\.request\.useragent=\"(?P<agent>[^\"]*)\""
    r".*http\.response\.status=(?P<status>\d+)"
)


@dataclass(frozen=True)
class Put:
    time: datetime
    repository: str
    tag: str
    agent: str
    status: int


def manifest_puts(reg: Registry) -> list[Put]:
    """Every tag PUT the registry answered, in order, with its time and User-Agent."""
    reg.settle()
    out = []
    for m in _RESPONSE_RE.finditer(reg.log_text()):
        if m["method"] != "PUT" or "/manifests/" not in m["uri"]:
            continue
        repo, _, ref = m["uri"].removeprefix("/v2/").partition("/manifests/")
        if ref.startswith("sha256:"):
            continue  # an index child, by digest: no tag
        stamp = m["time"].rstrip("Z")[:26]  # microseconds: what fromisoformat takes
        t = datetime.fromisoformat(stamp + "+00:00")
        out.append(Put(t, repo, ref, m["agent"], int(m["status"])))
    return out


def replica_of(agent: str) -> str:
    m = re.search(r"\(replica ([^)]+)\)", agent)
    return m.group(1) if m else ""


requires_etcd = pytest.mark.skipif(
    shutil.which("etcd") is None and not Path(ETCD_BIN).exists(),
    reason="etcd-server is not installed (scripts/bootstrap installs it)",
)


@pytest.fixture
def one_etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A single-member etcd, for tests of one store or one replica in-process."""
    cluster = etcd_cluster(tmp_path / "etcd", 1)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


async def until(cond: Callable[[], object], what: str, timeout: float = 10) -> None:
    """Poll ``cond`` from inside the event loop until true; fails the test on timeout."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)  # sleep-ok: poll interval of a bounded wait


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    cluster = etcd_cluster(tmp_path / "etcd")
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@dataclass
class Corpus:
    source: Registry
    targets: list[Registry]

    def push_tag(self, tag: str, repos: list[str] | None = None) -> None:
        for repo in repos or REPOS:
            push(self.source.url, repo, tag, image(f"{repo}-{tag}", layers=1, size=512))

    def synced(self, tag: str, repos: list[str] | None = None) -> bool:
        return all(tag in tags(t.url, r) for t in self.targets for r in repos or REPOS)


@pytest.fixture
def corpus(registries: RegistryFactory) -> Corpus:
    c = Corpus(registries(), [registries(), registries()])
    c.push_tag("v1")
    return c


Replicas = Callable[..., list[DaemonProcess]]


@pytest.fixture
def replicas(tmp_path: Path, corpus: Corpus, etcd: EtcdCluster) -> Iterator[Replicas]:
    """``replicas(n)`` starts n `syncd run` replicas of one config (names rep0..)."""
    started: list[DaemonProcess] = []

    def start(n: int = 3, *, interval: float = INTERVAL, **cluster: Any) -> list[DaemonProcess]:
        procs = []
        for i in range(n):
            doc = {
                "registries": {
                    "src": {"url": corpus.source.url},
                    **{f"t{j}": {"url": t.url} for j, t in enumerate(corpus.targets)},
                },
                "rules": [
                    {
                        "name": "mirror",
                        "source": "src",
                        "targets": [f"t{j}" for j in range(len(corpus.targets))],
                        "repositories": ["team/*"],
                        "interval": f"{interval}s",
                    }
                ],
                "server": {"webhook_token": TOKEN},
                "cluster": {
                    "etcd": {"endpoints": etcd.endpoints},
                    "name": f"rep{i}",
                    "lease_ttl": f"{TTL}s",
                    "expected_members": n,
                    **cluster,
                },
            }
            path = tmp_path / f"replica-{i}.yaml"
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
            port = free_port()
            argv = [PYTHON, "-m", "syncd", "-c", str(path), "run"]
            argv += ["--listen", f"127.0.0.1:{port}", "--log-format", "json"]
            d = DaemonProcess(argv, port, tmp_path / f"replica-{i}.log")
            started.append(d)
            procs.append(d.start())
        for d in procs:
            d.wait_ready(30)
        return procs

    yield start
    for d in started:
        d.kill()


def status(d: DaemonProcess) -> dict[str, Any]:
    code, body = d.get("/status")
    assert code == 200, code
    doc: dict[str, Any] = yaml.safe_load(body)
    return doc["cluster"]


def owned(d: DaemonProcess) -> list[str]:
    return sorted(r for repos in status(d)["units_owned"].values() for r in repos)
