"""Build a Config by hand and run a pass in-process (copy, referrer and fault tests)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from syncd.config.schema import Config, RegistryConfig, RuleConfig
from syncd.metrics import Metrics
from syncd.secret import Secret
from syncd.sync import RulePassResult, open_syncer
from tests.helpers.registry import Registry


def make_config(
    source: Registry | str,
    targets: Sequence[Registry | str],
    repositories: Sequence[str],
    *,
    retries: int = 3,
    **rule: Any,
) -> Config:
    """One rule named ``r`` from registry ``src`` to ``t0``, ``t1``, … (Registry or URL)."""

    def registry(name: str, r: Registry | str) -> RegistryConfig:
        if isinstance(r, str):
            return RegistryConfig(name=name, url=r)
        password = Secret(r.password) if r.password else None
        return RegistryConfig(name=name, url=r.url, username=r.username, password=password)

    regs = {"src": registry("src", source)}
    names = []
    for i, t in enumerate(targets):
        regs[f"t{i}"] = registry(f"t{i}", t)
        names.append(f"t{i}")
    r = RuleConfig(
        name=rule.pop("name", "r"),
        source="src",
        targets=tuple(names),
        repositories=tuple(repositories),
        retries=retries,
        **rule,
    )
    return Config(path="<test>", registries=regs, rules=(r,))


async def sync(
    config: Config,
    metrics: Metrics | None = None,
    *,
    dry_run: bool = False,
    track: bool = False,
    probe_up_to_date: bool = True,
) -> RulePassResult:
    """Every rule of ``config`` once, through one Syncer; the results added up.

    ``probe_up_to_date=False`` is how ``syncd once`` runs (see ``ReferrerSync``).
    """
    total = RulePassResult("*")
    async with open_syncer(
        config, metrics, track_target_bytes=track, probe_up_to_date=probe_up_to_date
    ) as syncer:
        for rule in config.rules:
            total.add(await syncer.run_rule(rule, dry_run=dry_run))
    return total
