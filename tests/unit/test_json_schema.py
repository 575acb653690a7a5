"""``syncd schema``: a valid JSON Schema that every shipped config satisfies."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import jsonschema
import pytest
import yaml

from syncd.config.json_schema import config_json_schema
from tests.unit.test_shipped_yaml import CONFIGS

SCHEMA = config_json_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def _errors(doc: Any) -> list[str]:
    errors = VALIDATOR.iter_errors(doc)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_syncd_schema_prints_it_without_a_config() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "syncd", "schema"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == SCHEMA


def test_the_shipped_configs_are_found() -> None:
    names = {name for name, _, _ in CONFIGS}
    assert {"config/example.yaml", "deploy/kubernetes/configmap.yaml#config.yaml"} <= names


@pytest.mark.parametrize(("name", "text", "local"), CONFIGS, ids=[c[0] for c in CONFIGS])
def test_shipped_config_satisfies_the_schema(name: str, text: str, local: bool) -> None:
    assert _errors(yaml.safe_load(text)) == [], name


_MINIMAL = {
    "registries": {"src": {"url": "http://127.0.0.1:5000"}, "dst": {"url": "dst:5443"}},
    "rules": [{"name": "r", "source": "src", "targets": ["dst"], "repositories": ["a/b"]}],
}


@pytest.mark.parametrize(
    ("change", "accepted"),
    [
        ({}, True),
        ({"targets": "dst", "repositories": "a/*"}, True),  # one-or-many
        ({"interval": "5m", "target_recheck": 0}, True),  # durations: text or seconds
        ({"tags": ["v1", "latest"]}, True),  # tags as a list of names
        ({"tags": {"include": "^v", "newest": 3}}, True),
        ({"tags": {"newest": 0}}, False),
        ({"retries": "five"}, False),
        ({"overwrite": "yes"}, False),  # strict: a YAML string is no boolean
        ({"colour": "blue"}, False),  # unknown key
        ({"targets": 3}, False),
        ({"retries": "${RETRIES}", "overwrite": "${OVERWRITE}"}, True),  # from the environment
        ({"retries": "${RETRIES} and more"}, False),
    ],
)
def test_the_schema_accepts_what_the_loader_accepts(change: dict[str, Any], accepted: bool) -> None:
    doc = json.loads(json.dumps(_MINIMAL))
    doc["rules"][0].update(change)
    assert (_errors(doc) == []) is accepted, _errors(doc)


def test_registry_names_and_required_keys_are_checked() -> None:
    doc = json.loads(json.dumps(_MINIMAL))
    doc["registries"]["Bad Name"] = {"url": "x:1"}
    del doc["rules"][0]["source"]
    errors = _errors(doc)
    assert any("Bad Name" in e for e in errors), errors
    assert any("'source' is a required property" in e for e in errors), errors
