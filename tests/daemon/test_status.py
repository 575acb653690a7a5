"""``GET /status`` of a real ``syncd run`` process, and ``syncd status`` asking it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.daemon.conftest import PYTHON, REPO, DaemonFactory, wait_until, write_config
from tests.helpers.images import image, push
from tests.helpers.registry import Registry, free_port

APP = "team/app"
OTHER = "team/other"


def syncd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "syncd", *args], capture_output=True, text=True, timeout=60, cwd=REPO
    )


def _rules(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in doc["rules"]}


def test_status_serves_the_latest_report_of_every_rule(
    source: Registry, target: Registry, daemons: DaemonFactory, tmp_path: Path
) -> None:
    good = push(source.url, APP, "v1", image("status-good", layers=2))
    refused = push(source.url, OTHER, "v1", image("status-src", layers=1))
    theirs = push(target.url, OTHER, "v1", image("status-theirs", layers=1))
    cfg = write_config(
        tmp_path / "config.yaml",
        {"src": source.url, "dst": target.url},
        [
            {"name": "good", "source": "src", "targets": ["dst"], "repositories": [APP]},
            {
                "name": "bad",
                "source": "src",
                "targets": ["dst"],
                "repositories": [OTHER],
                "overwrite": False,
            },
        ],
    )
    # syncd status reads server.listen from the config when --listen is not given.
    port = free_port()
    doc = yaml.safe_load(cfg.read_text())
    doc["server"]["listen"] = f"127.0.0.1:{port}"
    cfg.write_text(yaml.safe_dump(doc))
    d = daemons(cfg, port=port)
    d.wait_ready()

    def both_reported() -> bool:
        status, body = d.get("/status")
        return status == 200 and len(json.loads(body)["rules"]) == 2

    wait_until(both_reported, 20, "a report of both rules at /status")
    # No credentials needed, like /metrics (the webhook token guards only the webhooks).
    assert d.get("/status")[0] == 200
    report = json.loads(d.get("/status")[1])
    assert report["version"] == 1
    assert [r["name"] for r in report["rules"]] == ["good", "bad"]  # config order
    rules = _rules(report)
    assert rules["good"]["targets"] == [
        {
            "target": "dst",
            "copied": 1,
            "up_to_date": 0,
            "failed": 0,
            "deleted": 0,
            "bytes": rules["good"]["targets"][0]["bytes"],
        }
    ]
    assert rules["good"]["targets"][0]["bytes"] > 0 and rules["good"]["failures"] == []
    (failure,) = rules["bad"]["failures"]
    assert failure["source"] == f"src/{OTHER}:v1" and failure["target"] == f"dst/{OTHER}:v1"
    assert (failure["digest"], failure["reason"]) == (refused, "overwrite_refused")
    assert theirs in failure["message"] and good not in failure["message"]

    # syncd status, for machines and for people.
    r = syncd("status", "--listen", f"127.0.0.1:{d.port}", "--output", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == report
    r = syncd("-c", str(cfg), "status")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("rule good: ") and lines[0].endswith(", ok")
    assert any(line.split()[:4] == ["dst", "1", "0", "0"] for line in lines), r.stdout
    assert f"  failed: src/{OTHER}:v1 -> dst/{OTHER}:v1: overwrite_refused: " in r.stdout

    assert d.stop() == 0
    # With the daemon gone, the reports it left in the state store answer.
    r = syncd("-c", str(cfg), "status")
    assert r.returncode == 0, r.stderr
    assert any(line.startswith("rule good: ") for line in r.stdout.splitlines()), r.stdout
    assert "(from the state store (no daemon answered at" in r.stdout
    # Without a config there is no store to fall back to.
    r = syncd("status", "--listen", f"127.0.0.1:{d.port}")
    assert r.returncode == 1
    assert "syncd: no run report: no daemon answered at" in r.stderr
