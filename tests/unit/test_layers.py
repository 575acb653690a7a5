"""Imports point down only (style.md's layering, checked the way ggcr's depcheck does)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "syncd"

L0 = {
    "syncd",
    "syncd.errors",
    "syncd.reference",
    "syncd.digest",
    "syncd.manifest",
    "syncd.rules",
    "syncd.webhooks",
    "syncd.config",
    "syncd.config.schema",
    "syncd.config.values",
    "syncd.config.env",
    "syncd.secret",
    "syncd.durations",
    "syncd.proxy",
    "syncd.state",
    "syncd.ownership",
    "syncd.cluster.rendezvous",
    "syncd.storage",
    "syncd.endpoint",
    "syncd.lru",
}
L1_PREFIXES = (
    "syncd.config.load",
    "syncd.config.json_schema",
    "syncd.config.yaml_positions",
    "syncd.config.checks",
    "syncd.registry",
    "syncd.layout",
    "syncd.metrics",
    "syncd.logs",
    "syncd.cluster",
    "syncd.state_sqlite",
)
L2_PREFIXES = (
    "syncd.copy",
    "syncd.blobs",
    "syncd.sync",
    "syncd.server",
    "syncd.daemon",
    "syncd.referrers",
    "syncd.report",
    "syncd.plan",
    "syncd.target_bytes",
    "syncd.verify",
    "syncd.status",
    "syncd.facts",
    "syncd.prune",
    "syncd.results",
    "syncd.accounting",
    "syncd.singleflight",
    "syncd.platforms",
)
IO_MODULES = {"asyncio", "aiohttp", "yaml", "prometheus_client", "socket", "subprocess"}


def layer(module: str) -> int:
    if module in L0:
        return 0
    if module.startswith(L1_PREFIXES):
        return 1
    if module.startswith(L2_PREFIXES):
        return 2
    return 3


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts)
        out.append((name.removesuffix(".__init__"), path))
    return out


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize(("name", "path"), modules(), ids=lambda v: str(v))
def test_imports_point_down(name: str, path: Path) -> None:
    mine = layer(name)
    for imp in imports(path):
        if imp.startswith("syncd"):
            assert layer(imp) <= mine or imp == name, f"{name} (L{mine}) imports {imp}"
        if mine == 0:
            assert imp.split(".")[0] not in IO_MODULES, f"pure {name} imports {imp}"
    if name == "syncd.server":
        bad = [
            i for i in imports(path) if i.startswith(("syncd.copy", "syncd.sync", "syncd.registry"))
        ]
        assert not bad, f"server must not know the copy layers: {bad}"
