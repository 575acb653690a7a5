"""The fence: a replica that lost its lease puts no manifest and starts no copy."""

from __future__ import annotations

from collections.abc import Sequence

from syncd.sync import open_syncer
from tests.copy.conftest import make_config
from tests.helpers.images import image, push
from tests.helpers.registry import Registry


class _Fence:
    """An Ownership whose fence the test turns on after the blobs have arrived."""

    def __init__(self, target: Registry) -> None:
        self.target = target
        self.allowed = True
        self.asked = 0

    async def select(
        self, rule: str, repositories: Sequence[str], *, complete: bool = True
    ) -> list[str]:
        return list(repositories)

    def may_write(self) -> bool:
        self.asked += 1
        return self.allowed


async def test_no_manifest_put_once_fenced(source: Registry, target: Registry) -> None:
    push(source.url, "app", "v1", image("fenced"))
    config = make_config(source, [target], ["app"])
    fence = _Fence(target)
    async with open_syncer(config) as syncer:
        syncer.ownership = fence

        def closing_fence() -> bool:
            # The copy engine asks right before the PUT: the blobs are already there.
            fence.allowed = False
            return False

        syncer.engine.fence = closing_fence
        result = await syncer.run_rule(config.rules[0])
    counts = target.counts()
    assert counts["manifest_put"] == 0
    assert counts["upload_put"] > 0  # the blobs went; only the tag is withheld
    assert result.failed == 1 and "cluster lease lost" in result.failures[0]


async def test_no_copy_starts_once_fenced(source: Registry, target: Registry) -> None:
    for i in range(3):
        push(source.url, f"app{i}", "v1", image(f"f{i}"))
    config = make_config(source, [target], ["app0", "app1", "app2"])
    fence = _Fence(target)
    fence.allowed = False
    async with open_syncer(config) as syncer:
        syncer.ownership = fence
        syncer.engine.fence = fence.may_write
        result = await syncer.run_rule(config.rules[0])
    counts = target.counts()
    assert counts["upload_post"] == 0 and counts["manifest_put"] == 0
    assert result.fenced == 3 and not result.ok
