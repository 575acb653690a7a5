"""Helpers for copy-engine tests: build a Config by hand and run a pass in-process."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from syncd.config.schema import Config, RegistryConfig, RuleConfig, TagFilter
from syncd.metrics import Metrics
from syncd.sync import RulePassResult, open_syncer
from tests.helpers.registry import Registry


def make_config(
    source: Registry, targets: Sequence[Registry], repositories: Sequence[str], **rule: Any
) -> Config:
    regs = {"src": RegistryConfig(name="src", url=source.url)}
    names = []
    for i, t in enumerate(targets):
        regs[f"t{i}"] = RegistryConfig(name=f"t{i}", url=t.url)
        names.append(f"t{i}")
    tags = rule.pop("tags", TagFilter())
    r = RuleConfig(
        name=rule.pop("name", "r"),
        source="src",
        targets=tuple(names),
        repositories=tuple(repositories),
        tags=tags,
        retries=rule.pop("retries", 3),
        **rule,
    )
    return Config(path="<test>", registries=regs, rules=(r,))


async def sync(
    config: Config,
    metrics: Metrics | None = None,
    *,
    dry_run: bool = False,
    track: bool = False,
) -> RulePassResult:
    total = RulePassResult("*")
    async with open_syncer(config, metrics, track_target_bytes=track) as syncer:
        for rule in config.rules:
            total.add(await syncer.run_rule(rule, dry_run=dry_run))
    return total
