"""A repository glob against a registry without ``/v2/_catalog`` is a clear error in
``plan`` and ``once`` (exit 1) naming the registry and the rule, not a silent empty rule.
The registry is a real one behind a front that answers its catalog the ways registries
without one do (404 as GHCR and zuul-registry, 401 UNSUPPORTED, 405)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.cli.test_cli import run
from tests.helpers.images import image, push
from tests.helpers.registry import Registry, RegistryFactory, manifest_raw
from tests.referrers.api_proxy import ReferrersFront

UNSUPPORTED = json.dumps(
    {"errors": [{"code": "UNSUPPORTED", "message": "The operation is unsupported."}]}
).encode()


@pytest.fixture
def fronts() -> Iterator[list[ReferrersFront]]:
    started: list[ReferrersFront] = []
    yield started
    for f in started:
        f.stop()


@pytest.mark.parametrize(
    "answer",
    [
        (404, b"404 page not found", "text/plain"),
        (401, UNSUPPORTED, "application/json"),
        (405, b"", "text/plain"),
    ],
    ids=["404", "401-unsupported", "405"],
)
def test_glob_without_catalog_is_an_error(
    registries: RegistryFactory,
    target: Registry,
    fronts: list[ReferrersFront],
    tmp_path: Path,
    answer: tuple[int, bytes, str],
) -> None:
    front = ReferrersFront(registries(), answers={"/v2/_catalog": answer}).start()
    fronts.append(front)
    img = image("nocat")
    push(front.upstream.url, "team/app", "v1", img)
    cfg = tmp_path / "c.yaml"
    doc = {
        "registries": {"ghcr": {"url": front.url}, "dst": {"url": target.url}},
        "defaults": {"retries": 1},
        "rules": [
            {"name": "glob", "source": "ghcr", "targets": ["dst"], "repositories": ["team/*"]}
        ],
    }
    cfg.write_text(yaml.safe_dump(doc))
    for command in ("plan", "once"):
        out = run("-c", str(cfg), command)
        text = out.stdout + out.stderr
        assert out.returncode == 1, text
        assert "registry 'ghcr' does not list its repositories" in text, text
        assert "rule 'glob' cannot expand team/*" in text and "by name" in text
    # Named exactly, the same repository syncs.
    doc["rules"][0]["repositories"] = ["team/app"]  # type: ignore[index]
    cfg.write_text(yaml.safe_dump(doc))
    out = run("-c", str(cfg), "once")
    assert out.returncode == 0, out.stdout + out.stderr
    assert manifest_raw(target.url, "team/app", "v1") == img.raw
