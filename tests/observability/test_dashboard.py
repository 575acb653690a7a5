"""The Grafana dashboard: well-formed, and every query names metrics syncd really exposes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.observability.promql import check_expr, exposed_metrics, metric_refs

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "syncd-dashboard.json"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
# What an operator must find on the dashboard (issue 5), by the metric that shows it.
REQUIRED_METRICS = {
    "syncd_blob_bytes_copied_total": "throughput",
    "syncd_images_synced_total": "images synced by rule",
    "syncd_image_failures_total": "images failed by rule",
    "syncd_manifest_pushes_total": "push rate per target repository",
    "syncd_target_bytes": "bytes stored per target repository",
    "syncd_last_success_timestamp_seconds": "last success age per rule",
    "syncd_retries_total": "retries",
    "syncd_registry_requests_total": "registry requests by status code",
    "syncd_registry_request_duration_seconds_bucket": "registry request latency",
    "syncd_blobs_copied_total": "blobs copied",
    "syncd_blobs_skipped_total": "blobs skipped",
    "syncd_blobs_mounted_total": "blobs mounted",
    "syncd_config_reloads_total": "config reloads",
    "syncd_registry_quota_remaining": "pull budget left per registry and account",
    "syncd_quota_waits_total": "requests held back by a budget",
    "syncd_registry_concurrency": "adaptive concurrency per registry and kind",
}


def load() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def panels() -> list[dict[str, Any]]:
    out = []
    for panel in load()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # panels inside a collapsed row
    return out


def queries() -> list[tuple[str, str]]:
    """(panel title / refId, expr) of every panel query."""
    return [
        (f"{p['title']}/{t['refId']}", t["expr"])
        for p in panels()
        if p["type"] != "row"
        for t in p["targets"]
    ]


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's variables by what they expand to with "All" selected."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
    expr = expr.replace("$__range", "1h")
    return re.sub(r"\$\{?(job|instance|rule|target)\}?", ".*", expr)


def test_dashboard_shape() -> None:
    doc = load()
    assert doc["title"] and doc["uid"]
    assert 36 <= doc["schemaVersion"] <= 41
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for name in ("rule", "target"):
        assert variables[name]["type"] == "query"
        assert variables[name]["includeAll"] and variables[name]["multi"]
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_panels_use_the_datasource_variable_and_fit_the_grid() -> None:
    occupied: set[tuple[int, int]] = set()
    for panel in panels():
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"


def test_the_required_views_are_there() -> None:
    used = {name for _, expr in queries() for name, _ in metric_refs(expr)}
    missing = {what for metric, what in REQUIRED_METRICS.items() if metric not in used}
    assert missing == set()


@pytest.mark.parametrize(("where", "expr"), queries(), ids=[q[0] for q in queries()])
def test_query_uses_only_metrics_and_labels_syncd_exposes(where: str, expr: str) -> None:
    assert check_expr(expr, exposed_metrics()) == []


def test_variable_queries_use_exposed_metrics_and_labels() -> None:
    exposed = exposed_metrics()
    for variable in load()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"]
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert m, query
        assert check_expr(m.group(1), exposed) == []
        (name, _), *_ = metric_refs(m.group(1))
        assert m.group(2) in exposed[name] | {"job", "instance"}, query


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    # promtool parses recording rules strictly; wrapping every query in one is the cheapest
    # way to run Prometheus' own parser over them without a server.
    rules = [
        {"record": f"dashboard:query_{i}", "expr": grafana_to_promql(expr)}
        for i, (_, expr) in enumerate(queries())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_checker_catches_unknown_metrics_and_labels() -> None:
    exposed = exposed_metrics()
    assert check_expr("rate(syncd_blob_bytes_copied_total[5m])", exposed) == []
    assert check_expr("rate(syncd_blob_bytes_copied[5m])", exposed)  # no _total
    assert check_expr('syncd_target_bytes{repo="a"}', exposed)  # the label is repository
    assert check_expr("sum by (rule) (syncd_target_bytes)", exposed)
    assert check_expr("syncd_sync_duration_seconds_bucket", exposed) == []
    assert check_expr("syncd_sync_duration_seconds", exposed)  # a histogram has no such series
