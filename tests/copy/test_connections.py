"""No connection deadlock: more large blobs in flight than connections to either registry.

With ``max_concurrency: 2`` on both sides and a dozen multi-MB blobs copied at once, a tee
that took its source connection and then waited for a target one (while another tee held
the target connection and waited for the source) would hang forever. Source and target
slots are taken together, so the pass completes; the timeout turns a hang into a failure.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from syncd.blobs import BlobMover
from syncd.config.schema import Config
from syncd.copy import CopyEngine
from syncd.registry.pool import ClientPool
from syncd.registry.slots import TransferSlots
from syncd.sync import Syncer
from tests.helpers.images import image, push
from tests.helpers.passes import make_config
from tests.helpers.registry import Registry, manifest_raw

MB = 1024 * 1024


def narrow(cfg: Config, max_concurrency: int) -> Config:
    regs = {n: replace(r, max_concurrency=max_concurrency) for n, r in cfg.registries.items()}
    return replace(cfg, registries=regs)


async def test_many_large_blobs_through_two_connections(source: Registry, target: Registry) -> None:
    images = [image(f"wide-{i}", layers=3, size=3 * MB) for i in range(4)]
    for i, img in enumerate(images):
        push(source.url, f"wide/app{i}", "v1", img)
    cfg = narrow(
        make_config(source, [target], [f"wide/app{i}" for i in range(4)], concurrency=8),
        max_concurrency=2,
    )
    # Chunked uploads: each PATCH takes a target connection anew while the tee keeps its
    # source GET open, which is when one side's connections can end up all held.
    blobs = BlobMover(chunked_threshold=MB, chunk_size=MB)
    async with ClientPool(cfg.registries) as pool:
        syncer = Syncer(cfg, pool, CopyEngine(blobs=blobs), track_target_bytes=False)
        async with asyncio.timeout(120):
            result = await syncer.run_rule(cfg.rules[0])
    assert result.ok and result.synced == 4, result.failures
    # Never more transfers on a registry than it has connections.
    assert blobs.slots.peak == {"src": 2, "t0": 2}
    for i, img in enumerate(images):
        assert manifest_raw(target.url, f"wide/app{i}", "v1") == img.raw


async def test_slots_are_taken_all_or_none() -> None:
    """A transfer waiting for two registries holds neither meanwhile: a third that needs
    only the free one goes ahead of it."""
    slots = TransferSlots()
    entered = {name: asyncio.Event() for name in ("both", "b")}

    async def hold(needs: dict[str, tuple[int, int]], name: str) -> None:
        async with slots.take(needs):
            entered[name].set()

    async with asyncio.timeout(10), asyncio.TaskGroup() as tg:
        async with slots.take({"a": (1, 1)}):
            both = tg.create_task(hold({"a": (1, 1), "b": (1, 1)}, "both"))
            tg.create_task(hold({"b": (1, 1)}, "b"))
            await entered["b"].wait()
            assert not entered["both"].is_set()
        await both
    assert entered["both"].is_set() and slots.in_use("a") == slots.in_use("b") == 0
