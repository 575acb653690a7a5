"""Cluster mode on one machine: 1, 2 and 3 replicas, takeover, and webhook latency.

    .venv/bin/python -m bench.cluster [--repos 120] [--tags 2] [--json out.json]

Everything runs on loopback: a 3-member etcd cluster (Debian etcd-server 3.4), a source and
a target registry (storage on /dev/shm), and `syncd run` replicas. On a 2-core machine this
measures correctness and overhead, not scale-out: the replicas share the cores with the
registries and etcd.

* **cold pass**: a fresh target per run; wall time from the replicas' start until every tag
  is at the target (read from the replicas' `syncd_images_synced_total`), the manifest PUTs
  per tag (must be 1), the etcd requests of the pass by operation, and the same for one
  process without a `cluster:` section;
* **no-change pass**: the etcd requests of the next (periodic) pass, per unit;
* **takeover**: SIGKILL of one of 3 replicas, then a new tag in each of its units: seconds
  until all of them are at the target;
* **webhook**: a push, then a webhook sent to replica 0; seconds until the tag is at the
  target, p50 over several pushes, with 3 replicas (most events handed over through etcd)
  and with one process.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.daemon.conftest import PYTHON, TOKEN, DaemonProcess
from tests.helpers.etcd import etcd_cluster
from tests.helpers.images import image, push
from tests.helpers.registry import RegistryFactory, free_port, tags

TTL = 3


def _wait(cond: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if cond():
            return time.monotonic() - start
        time.sleep(step)  # sleep-ok: poll interval of a bounded wait
    raise TimeoutError(what)


def _metric_sum(d: DaemonProcess, name: str, **labels: str) -> dict[str, float]:
    """``name`` summed per value of the one label not given (or under ``""``)."""
    code, body = d.get("/metrics")
    out: Counter[str] = Counter()
    if code != 200:
        return {}
    for line in body.decode().splitlines():
        if not line.startswith(name):
            continue
        key, _, value = line.rpartition(" ")
        metric, _, rest = key.partition("{")
        if metric != name:
            continue
        parsed = dict(
            (kv.split("=", 1)[0], kv.split("=", 1)[1].strip('"'))
            for kv in rest.rstrip("}").split(",")
            if "=" in kv
        )
        if any(parsed.get(k) != v for k, v in labels.items()):
            continue
        free = [v for k, v in parsed.items() if k not in labels]
        out[free[0] if free else ""] += float(value)
    return dict(out)


class Bench:
    def __init__(self, base: Path, repos: int, tags_per_repo: int) -> None:
        self.base = base
        self.repos = [f"fleet/svc{i:03d}" for i in range(repos)]
        self.tags = [f"v{j}" for j in range(tags_per_repo)]
        self.factory = RegistryFactory(base)
        self.source = self.factory(storage_on_shm=True)
        self.etcd = etcd_cluster(base / "etcd").start()
        self.procs: list[DaemonProcess] = []
        for repo in self.repos:
            for tag in self.tags:
                push(self.source.url, repo, tag, image(f"{repo}-{tag}", layers=1, size=256))

    def close(self) -> None:
        for d in self.procs:
            d.kill()
        self.factory.close()
        self.etcd.stop()

    def start(
        self, n: int, target_url: str, *, cluster: bool, interval: float, tag: str
    ) -> list[DaemonProcess]:
        out = []
        for i in range(n):
            doc: dict[str, Any] = {
                "registries": {"src": {"url": self.source.url}, "dst": {"url": target_url}},
                "rules": [
                    {
                        "name": "fleet",
                        "source": "src",
                        "targets": ["dst"],
                        "repositories": ["fleet/*"],
                        "interval": f"{interval}s",
                    }
                ],
                "server": {"webhook_token": TOKEN},
            }
            if cluster:
                doc["cluster"] = {
                    "etcd": {"endpoints": self.etcd.endpoints},
                    "name": f"rep{i}",
                    "prefix": f"/bench-{tag}/",
                    "lease_ttl": f"{TTL}s",
                    "expected_members": n,
                }
            path = self.base / f"{tag}-{i}.yaml"
            path.write_text(yaml.safe_dump(doc))
            port = free_port()
            argv = [PYTHON, "-m", "syncd", "-c", str(path), "run"]
            argv += ["--listen", f"127.0.0.1:{port}", "--log-format", "json"]
            d = DaemonProcess(argv, port, self.base / f"{tag}-{i}.log")
            self.procs.append(d)
            out.append(d.start())
        return out

    def synced(self, reps: list[DaemonProcess]) -> float:
        return sum(sum(_metric_sum(d, "syncd_images_synced_total").values()) for d in reps)

    def etcd_requests(self, reps: list[DaemonProcess]) -> Counter[str]:
        total: Counter[str] = Counter()
        for d in reps:
            total.update(_metric_sum(d, "syncd_cluster_etcd_requests_total"))
        return total

    def cold(self, n: int, *, cluster: bool) -> dict[str, Any]:
        target = self.factory(storage_on_shm=True)
        tag = f"{'c' if cluster else 'p'}{n}"
        images = len(self.repos) * len(self.tags)
        started = time.monotonic()
        interval = 15.0
        reps = self.start(n, target.url, cluster=cluster, interval=interval, tag=tag)
        wall = _wait(lambda: self.synced(reps) >= images, 300, "cold pass", step=0.2)
        wall = time.monotonic() - started
        puts = Counter(
            a.path for a in target.accesses() if a.kind == "manifest_put" and a.status == 201
        )
        first = self.etcd_requests(reps)
        passes = [e["seconds"] for d in reps for e in d.logs() if e.get("event") == "rule_pass"]
        # The next, periodic pass changes nothing: its etcd requests are the steady cost.
        marks = {d.port: len([e for e in d.logs() if e.get("event") == "rule_pass"]) for d in reps}
        for d in reps:
            _wait(
                lambda d=d: (
                    len([e for e in d.logs() if e.get("event") == "rule_pass"]) > marks[d.port]
                ),
                interval * 2 + 10,
                "second pass",
                step=0.2,
            )
        second = self.etcd_requests(reps) - first
        result = {
            "replicas": n,
            "cluster": cluster,
            "images": images,
            "wall_s": round(wall, 2),
            "images_per_s": round(images / wall, 1),
            "first_pass_s_per_replica": [round(s, 2) for s in passes],
            "manifest_puts_per_tag_max": max(puts.values()),
            "manifest_puts": sum(puts.values()),
            "etcd_first_pass": dict(first),
            "etcd_second_pass": dict(second),
            "units": len(self.repos),
        }
        for d in reps:
            d.stop()
        return result

    def takeover(self) -> dict[str, Any]:
        target = self.factory(storage_on_shm=True)
        reps = self.start(3, target.url, cluster=True, interval=2.0, tag="takeover")
        images = len(self.repos) * len(self.tags)
        _wait(lambda: self.synced(reps) >= images, 300, "synced", step=0.2)
        victim = reps[2]
        _, body = victim.get("/status")
        units = [r for rs in json.loads(body)["cluster"]["units_owned"].values() for r in rs]
        for repo in units:
            push(self.source.url, repo, "next", image(f"{repo}-next", layers=1, size=256))
        victim.signal(signal.SIGKILL)
        killed = time.monotonic()
        _wait(lambda: all("next" in tags(target.url, r) for r in units), 60, "takeover", step=0.1)
        took = time.monotonic() - killed
        for d in reps[:2]:
            d.stop()
        return {
            "units_of_killed": len(units),
            "lease_ttl": TTL,
            "interval": 2.0,
            "s": round(took, 2),
        }

    def webhook(self, n: int, *, cluster: bool, pushes: int) -> dict[str, Any]:
        target = self.factory(storage_on_shm=True)
        tag = f"w{'c' if cluster else 'p'}{n}"
        reps = self.start(n, target.url, cluster=cluster, interval=600.0, tag=tag)
        images = len(self.repos) * len(self.tags)
        _wait(lambda: self.synced(reps) >= images, 300, "synced", step=0.2)
        latencies = []
        for k in range(pushes):
            repo = self.repos[(k * 7) % len(self.repos)]
            new = f"{tag}-hook{k}"
            push(self.source.url, repo, new, image(f"{repo}-{new}", layers=1, size=256))
            body = json.dumps(
                {
                    "events": [
                        {
                            "action": "push",
                            "target": {
                                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                                "repository": repo,
                                "tag": new,
                                "digest": "sha256:" + "0" * 64,
                            },
                        }
                    ]
                }
            ).encode()
            sent = time.monotonic()
            code, _ = reps[0].post("/webhooks/distribution", body)
            assert code == 202, code
            _wait(lambda r=repo, t=new: t in tags(target.url, r), 30, "webhook tag", step=0.02)
            latencies.append(time.monotonic() - sent)
        for d in reps:
            d.stop()
        return {
            "replicas": n,
            "cluster": cluster,
            "pushes": pushes,
            "p50_s": round(statistics.median(latencies), 3),
            "max_s": round(max(latencies), 3),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repos", type=int, default=120)
    parser.add_argument("--tags", type=int, default=2)
    parser.add_argument("--pushes", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="syncd-bench-cluster-"))
    bench = Bench(base, args.repos, args.tags)
    results: dict[str, Any] = {}
    try:
        results["cold"] = [bench.cold(1, cluster=False)] + [
            bench.cold(n, cluster=True) for n in (1, 2, 3)
        ]
        results["takeover"] = bench.takeover()
        results["webhook"] = [
            bench.webhook(1, cluster=False, pushes=args.pushes),
            bench.webhook(3, cluster=True, pushes=args.pushes),
        ]
    finally:
        bench.close()
        shutil.rmtree(base, ignore_errors=True)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
