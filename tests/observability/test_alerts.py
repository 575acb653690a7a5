"""The alert rules: valid for promtool, unit-tested, documented, and built on real metrics."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.observability.promql import check_expr, exposed_metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
ALERTS = DEPLOY / "alerts.yml"
ALERT_TESTS = DEPLOY / "alerts_test.yml"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
EXPECTED = {
    "SyncdDown",
    "SyncdRuleFailing",
    "SyncdRuleStale",
    "SyncdTargetRegistryUnreachable",
    "SyncdRetryStorm",
    "SyncdPushRateAnomaly",
    "SyncdTargetStorageGrowth",
    "SyncdConfigReloadFailing",
    "SyncdPullBudgetLow",
    "SyncdPruneHeldBack",
    "SyncdClusterReplicaWithoutLease",
    "SyncdClusterMembersMissing",
    "SyncdClusterUnownedUnits",
}


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _key(labels: dict[str, str]) -> tuple[str, str]:
    # SyncdPushRateAnomaly is two rules told apart by `kind`.
    return labels["alertname"], labels.get("kind", "")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_promtool_check_rules() -> None:
    done = _promtool("check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in done.stdout


def test_promtool_unit_tests_pass() -> None:
    done = _promtool("test", "rules", str(ALERT_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_example_scrape_config_is_valid_and_loads_the_rules() -> None:
    done = _promtool("check", "config", str(DEPLOY / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout


def test_the_expected_alerts_exist() -> None:
    assert {rule["alert"] for rule in _rules()} == EXPECTED
    kinds = {r["labels"].get("kind") for r in _rules() if r["alert"] == "SyncdPushRateAnomaly"}
    assert kinds == {"burst", "silence"}


@pytest.mark.parametrize(
    "rule", _rules(), ids=lambda r: f"{r['alert']}-{r['labels'].get('kind', '')}"
)
def test_alert_is_documented_for_the_on_call(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in {"critical", "warning"}
    assert "for" in rule, "every alert says how long its condition must hold"
    annotations = rule["annotations"]
    assert set(annotations) >= {"summary", "description", "runbook"}
    runbook = annotations["runbook"]
    for part in ("Meaning:", "Check:", "Do:"):
        assert part in runbook, f"runbook of {rule['alert']} lacks {part!r}"


def test_every_alert_has_firing_and_quiet_unit_tests() -> None:
    firing: set[tuple[str, str]] = set()
    quiet: set[tuple[str, str]] = set()
    asserted_annotations: set[tuple[str, str]] = set()
    doc = yaml.safe_load(ALERT_TESTS.read_text())
    for test in doc["tests"]:
        for case in test.get("alert_rule_test", []):
            if not case["exp_alerts"]:
                # A quiet case checks both rules of a shared alert name.
                quiet.update((case["alertname"], k) for k in ("", "burst", "silence"))
            for alert in case["exp_alerts"]:
                key = _key({"alertname": case["alertname"], **alert["exp_labels"]})
                firing.add(key)
                if set(alert.get("exp_annotations", {})) >= {"summary", "description", "runbook"}:
                    asserted_annotations.add(key)
    rules = {_key({"alertname": r["alert"], **r["labels"]}) for r in _rules()}
    assert rules - firing == set(), "alerts without a firing test"
    assert rules - quiet == set(), "alerts without a not-firing test"
    assert rules - asserted_annotations == set(), "alerts whose annotations no test asserts"


@pytest.mark.parametrize(
    "rule", _rules(), ids=lambda r: f"{r['alert']}-{r['labels'].get('kind', '')}"
)
def test_alert_uses_only_metrics_and_labels_syncd_exposes(rule: dict[str, Any]) -> None:
    assert check_expr(rule["expr"], exposed_metrics()) == []
