"""Passes run in-process with a state file of the test's own."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from syncd.config.schema import Config, StateConfig
from syncd.metrics import Metrics
from syncd.results import RulePassResult
from tests.helpers.passes import make_config, sync
from tests.helpers.registry import Registry, http

ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


def stateful(
    tmp_path: Path, source: Registry, targets: list[Registry], repos: list[str], **rule: Any
) -> Config:
    """``make_config`` with a state file in ``tmp_path``."""
    cfg = make_config(source, targets, repos, **rule)
    return replace(cfg, state=StateConfig(str(tmp_path / "state.db")))


async def once(
    cfg: Config, metrics: Metrics | None = None, *, dry_run: bool = False
) -> RulePassResult:
    """One pass as a fresh process would make it (a new Syncer; the store file is kept)."""
    return await sync(cfg, metrics, dry_run=dry_run, probe_up_to_date=False)


def digest_of_tag(url: str, repo: str, tag: str) -> str | None:
    status, headers, _ = http(
        "HEAD", f"{url}/v2/{repo}/manifests/{tag}", headers={"Accept": ACCEPT}
    )
    return headers.get("Docker-Content-Digest") if status == 200 else None


def delete_tag(url: str, repo: str, tag: str) -> None:
    """Delete a tag the only way distribution can: its manifest, by digest."""
    digest = digest_of_tag(url, repo, tag)
    assert digest, f"{repo}:{tag} is not there"
    status, _, body = http("DELETE", f"{url}/v2/{repo}/manifests/{digest}")
    assert status == 202, (status, body)


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0
