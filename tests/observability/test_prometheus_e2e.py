"""A real Prometheus scrapes a real ``syncd run`` after it mirrored images between two real
registries; the numbers Prometheus stores match what was copied, the alert rules evaluate
cleanly on them (nothing fires), and every dashboard query runs."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.images import Blob, Image, image, layer, push
from tests.helpers.registry import Registry, free_port
from tests.observability.test_dashboard import grafana_to_promql, queries

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
RULE = "mirror"
INTERVAL = 3600  # one pass during the test: the numbers below are those of the first pass
# Dashboard panels that must show data after one sync (the others need failures, retries,
# mounts or referrers, which this scenario does not produce).
PANELS_WITH_DATA = (
    "Rules stale or failing",
    "Failed images in the last pass",
    "Throughput",
    "Images synced by rule",
    "Last success age per rule",
    "Push rate per target repository",
    "Bytes stored per target repository",
    "Blobs copied / skipped / mounted",
    "Registry requests by status code",
    "Registry request latency",
    "Adaptive concurrency",
    "Config reloads",
    "Last reload",
    "Scrape up",
)


@dataclass
class Process:
    """A subprocess with its output in a file, stopped by its own pid."""

    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def start(args: list[str], log: Path) -> Process:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    return Process(proc, log)


class PrometheusServer:
    """``/usr/bin/prometheus`` on a free loopback port with its storage in ``workdir``."""

    def __init__(self, workdir: Path, scrape_target: str) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {"job_name": "syncd", "static_configs": [{"targets": [scrape_target]}]}
            ],
        }
        path = workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.process = start(
            [
                PROMETHEUS,
                f"--config.file={path}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            workdir / "prometheus.log",
        )

    def get(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read())

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.proc.poll() is None, self.process.output()
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.port}/-/ready", timeout=2
                ) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)  # sleep-ok: poll interval of a bounded wait
        raise AssertionError(f"prometheus not ready:\n{self.process.output()}")

    def query(self, promql: str) -> list[dict[str, Any]]:
        answer = self.get("/api/v1/query", query=promql)
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def value(self, promql: str) -> float:
        """The value of a query that must return exactly one series."""
        result = self.query(promql)
        assert len(result) == 1, (promql, result)
        return float(result[0]["value"][1])


def wait_for(what: str, check: Any, timeout: float, *logs: Process) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)  # sleep-ok: poll interval of a bounded wait
    raise AssertionError(f"timed out waiting for {what}\n" + "\n".join(p.output() for p in logs))


def total(blobs: list[Blob]) -> int:
    return sum(len(b.data) for b in {b.digest: b for b in blobs}.values())


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "obs"
    path.mkdir()
    return path


@pytest.fixture
def stack(workdir: Path) -> Iterator[list[Process]]:
    """Processes the test started, stopped in reverse order even when it fails."""
    started: list[Process] = []
    yield started
    for process in reversed(started):
        process.stop()


def observe(
    config: dict[str, Any], workdir: Path, stack: list[Process]
) -> tuple[Process, PrometheusServer]:
    """Start ``syncd run`` with ``config`` and a Prometheus scraping it; return once the
    first pass of RULE is over and one more scrape has landed, so that Prometheus holds
    every counter of that pass."""
    listen = f"127.0.0.1:{free_port()}"
    config_path = workdir / "syncd.yml"
    config_path.write_text(yaml.safe_dump(config))
    syncd = start(
        [sys.executable, "-m", "syncd", "-c", str(config_path), "run", "--listen", listen],
        workdir / "syncd.log",
    )
    stack.append(syncd)
    prometheus = PrometheusServer(workdir, listen)
    stack.append(prometheus.process)
    prometheus.wait_ready()
    # Set at the end of every pass, clean or not.
    done = f'syncd_rule_last_pass_failures{{job="syncd", rule="{RULE}"}}'
    wait_for(
        "the first pass in Prometheus",
        lambda: prometheus.query(done),
        90,
        syncd,
        prometheus.process,
    )
    seen = prometheus.value(f"timestamp({done})")
    wait_for(
        "one more scrape",
        lambda: prometheus.value(f"timestamp({done})") > seen,
        30,
        syncd,
        prometheus.process,
    )
    return syncd, prometheus


def rule_config(source: str, target: str, repositories: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "registries": {"src": {"url": source}, "dst": {"url": target}},
        "rules": [
            {
                "name": RULE,
                "source": "src",
                "targets": ["dst"],
                "repositories": repositories,
                "target_prefix": "mirror/",
                "interval": f"{INTERVAL}s",
                **extra,
            }
        ],
    }


def test_prometheus_sees_what_syncd_copied(
    source: Registry, target: Registry, workdir: Path, stack: list[Process]
) -> None:
    # Two tags of one repository share a base layer; a second repository has its own blobs.
    base = layer("obs-base", 6000)
    v1 = image("obs-v1", layers=2, size=3000, shared=[base])
    v2 = image("obs-v2", layers=1, size=5000, shared=[base])
    lib = image("obs-lib", layers=1, size=7000)
    push(source.url, "team/app", "v1", v1)
    push(source.url, "team/app", "v2", v2)
    push(source.url, "team/lib", "1.0", lib)
    app_blobs = v1.blobs + v2.blobs
    uploaded = {b.digest: b for b in app_blobs + lib.blobs}

    started_at = time.time()
    syncd, prometheus = observe(
        rule_config(source.url, target.url, ["team/app", "team/lib"]), workdir, stack
    )
    assert syncd.proc.poll() is None, syncd.output()

    def v(promql: str) -> float:
        return prometheus.value(promql)

    dst = 'job="syncd", target="dst"'
    # Bytes: every blob crossed registries exactly once (the shared base is uploaded once).
    assert v(f"sum(syncd_blob_bytes_copied_total{{{dst}}})") == total(list(uploaded.values()))
    assert v(f"sum(syncd_blobs_copied_total{{{dst}}})") == len(uploaded)
    assert v(f"sum(syncd_blobs_mounted_total{{{dst}}}) or vector(0)") == 0
    assert v(f'syncd_images_synced_total{{{dst}, rule="{RULE}"}}') == 3
    assert v('sum(syncd_image_failures_total{job="syncd"}) or vector(0)') == 0
    # Pushes and storage per target repository (the name at the target, with the prefix).
    pushes = {
        r["metric"]["repository"]: float(r["value"][1])
        for r in prometheus.query(f"syncd_manifest_pushes_total{{{dst}}}")
    }
    assert pushes == {"mirror/team/app": 2, "mirror/team/lib": 1}
    stored = {
        r["metric"]["repository"]: float(r["value"][1])
        for r in prometheus.query(f"syncd_target_bytes{{{dst}}}")
    }
    assert stored == {"mirror/team/app": total(app_blobs), "mirror/team/lib": total(lib.blobs)}
    # What the alerts are built on.
    assert v(f'syncd_rule_last_pass_failures{{rule="{RULE}"}}') == 0
    assert v(f'syncd_rule_interval_seconds{{rule="{RULE}"}}') == INTERVAL
    last_success = v(f'syncd_last_success_timestamp_seconds{{rule="{RULE}"}}')
    assert started_at <= last_success <= time.time()
    assert v('process_start_time_seconds{job="syncd"}') <= last_success
    assert v('syncd_config_last_reload_successful{job="syncd"}') == 1
    assert v('sum(syncd_registry_requests_total{registry="dst", code=~"2.."})') > 0
    assert v('sum(syncd_registry_requests_total{code=~"error|5.."}) or vector(0)') == 0
    assert v('sum(syncd_registry_request_duration_seconds_count{registry="dst"})') > 0
    assert v('up{job="syncd"}') == 1

    # Label values stay bounded: no digest and no tag is a label value.
    series = prometheus.get("/api/v1/series", **{"match[]": '{job="syncd"}'})["data"]
    values = {value for labels in series for name, value in labels.items() if name != "le"}
    assert {v for v in values if "sha256" in v} == set()
    assert values & {"v1", "v2", "1.0"} == set()

    # The alert rules load and evaluate without errors on real data, and nothing fires.
    groups = prometheus.get("/api/v1/rules")["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == 14  # the cluster group loads too; its series are absent here
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    assert prometheus.get("/api/v1/alerts")["data"]["alerts"] == []

    # Every dashboard query runs; the ones this scenario feeds return series.
    empty = []
    for where, expr in queries():
        promql = grafana_to_promql(expr).replace("[5m]", "[1m]")
        if not prometheus.query(promql) and where.split("/")[0] in PANELS_WITH_DATA:
            empty.append(where)
    assert empty == []

    # The daemon stops gracefully (contract: 0 after SIGTERM).
    assert syncd.stop() == 0, syncd.output()
    stack.remove(syncd)


def test_prometheus_sees_an_unreachable_target(
    source: Registry, workdir: Path, stack: list[Process]
) -> None:
    """The inputs of SyncdRuleFailing, SyncdTargetRegistryUnreachable and SyncdRetryStorm,
    as a real failure produces them: connection failures are counted with code="error"."""
    push(source.url, "team/app", "v1", image("obs-down", layers=1, size=1000))
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    syncd, prometheus = observe(
        rule_config(source.url, dead, ["team/app"], retries=2), workdir, stack
    )

    def v(promql: str) -> float:
        return prometheus.value(promql)

    assert v(f'syncd_rule_last_pass_failures{{rule="{RULE}"}}') >= 1
    assert v(f'sum(syncd_image_failures_total{{rule="{RULE}", target="dst"}})') >= 1
    assert prometheus.query(f'syncd_last_success_timestamp_seconds{{rule="{RULE}"}}') == []
    assert v('sum(syncd_registry_requests_total{registry="dst", code="error"})') >= 1
    assert v('sum(syncd_registry_requests_total{registry="dst", code!="error"}) or vector(0)') == 0
    assert v('sum(syncd_retries_total{registry="dst"})') >= 1
    assert v("sum(syncd_images_synced_total) or vector(0)") == 0
    # SyncdRuleFailing sees it at once and waits out its `for` (pending, not yet firing).
    pending = prometheus.query('ALERTS{alertname="SyncdRuleFailing"}')
    assert [(a["metric"]["rule"], a["metric"]["alertstate"]) for a in pending] == [
        (RULE, "pending")
    ]
    assert syncd.stop() == 0, syncd.output()
    stack.remove(syncd)


def test_prometheus_sees_referrers_copied(
    source: Registry, target: Registry, workdir: Path, stack: list[Process]
) -> None:
    """A cosign signature travels with its image and is counted as a referrer; its blobs
    are uploads like any other."""
    app = image("obs-signed", layers=1, size=2000)
    push(source.url, "team/app", "v1", app)
    payload = json.dumps({"critical": {"image": {"docker-manifest-digest": app.digest}}})
    signature = Image(
        Blob(b"{}", "application/vnd.oci.image.config.v1+json"),
        [Blob(payload.encode(), "application/vnd.dev.cosign.simplesigning.v1+json")],
    )
    push(source.url, "team/app", f"sha256-{app.digest.split(':')[1]}.sig", signature)
    syncd, prometheus = observe(rule_config(source.url, target.url, ["team/app"]), workdir, stack)

    assert prometheus.value('syncd_referrers_copied_total{target="dst"}') == 1
    assert prometheus.value('syncd_images_synced_total{target="dst"}') == 1
    assert prometheus.value('syncd_blob_bytes_copied_total{target="dst"}') == total(
        app.blobs + signature.blobs
    )
    panel = next(expr for where, expr in queries() if where.startswith("Referrers copied/"))
    assert prometheus.query(grafana_to_promql(panel).replace("[5m]", "[1m]"))
    assert syncd.stop() == 0, syncd.output()
    stack.remove(syncd)
