"""``target_recheck``: a daemon's later passes trust the target tags it pushed or checked."""

from __future__ import annotations

import asyncio
import time

from syncd.sync import open_syncer
from tests.copy.conftest import make_config
from tests.helpers.images import image, push
from tests.helpers.registry import Registry, manifest_raw

UA = "syncd/"


async def test_a_steady_pass_asks_only_the_source(source: Registry, target: Registry) -> None:
    v1, v2, moved = image("rc-1"), image("rc-2"), image("rc-3")
    push(source.url, "rc/app", "v1", v1)
    push(source.url, "rc/app", "v2", v2)
    cfg = make_config(source, [target], ["rc/app"], target_recheck=600.0)
    rule = cfg.rules[0]
    async with open_syncer(cfg, None, track_target_bytes=False) as syncer:
        first = await syncer.run_rule(rule)
        assert first.ok and first.synced == 2

        smark, tmark = source.log_mark(), target.log_mark()
        steady = await syncer.run_rule(rule)
        assert steady.ok and steady.skipped == 2
        s, t = source.counts(smark, UA), target.counts(tmark, UA)
        assert s == {"manifest_head": 2, "tags_list": 1}
        assert t == {}, "a pushed tag is trusted: nothing asked at the target"

        # A new digest at the source is always looked at, at the target, before moving.
        push(source.url, "rc/app", "v1", moved)
        tmark = target.log_mark()
        changed = await syncer.run_rule(rule)
        assert changed.ok and changed.synced == 1 and changed.skipped == 1
        t = target.counts(tmark, UA)
        assert t["manifest_head"] == 1 and t["manifest_put"] == 1
        assert manifest_raw(target.url, "rc/app", "v1") == moved.raw


async def test_an_outside_change_is_repaired_once_the_recheck_is_due(
    source: Registry, target: Registry
) -> None:
    good, other = image("rd-1"), image("rd-2")
    push(source.url, "rd/app", "v1", good)
    cfg = make_config(source, [target], ["rd/app"], target_recheck=1.0)
    rule = cfg.rules[0]
    async with open_syncer(cfg, None, track_target_bytes=False) as syncer:
        assert (await syncer.run_rule(rule)).synced == 1
        push(target.url, "rd/app", "v1", other)  # someone else moves the target tag
        await syncer.run_rule(rule)
        assert manifest_raw(target.url, "rd/app", "v1") == other.raw, "trusted, not asked"
        trusted_at = time.monotonic()
        # Passes until one repairs the tag: the trust runs out within the 1 s window.
        async with asyncio.timeout(10):
            while (repaired := await syncer.run_rule(rule)).synced == 0:
                await asyncio.sleep(0.05)  # sleep-ok: poll interval of a bounded wait
        assert repaired.ok
        assert time.monotonic() - trusted_at <= 1.0 + 5, "the window bounds the trust"
        assert manifest_raw(target.url, "rd/app", "v1") == good.raw


async def test_by_default_every_pass_asks_the_target(source: Registry, target: Registry) -> None:
    good, other = image("re-1"), image("re-2")
    push(source.url, "re/app", "v1", good)
    cfg = make_config(source, [target], ["re/app"])
    rule = cfg.rules[0]
    async with open_syncer(cfg, None, track_target_bytes=False) as syncer:
        assert (await syncer.run_rule(rule)).synced == 1
        push(target.url, "re/app", "v1", other)
        tmark = target.log_mark()
        repaired = await syncer.run_rule(rule)
        assert repaired.ok and repaired.synced == 1
        assert target.counts(tmark, UA)["manifest_head"] == 1
        assert manifest_raw(target.url, "re/app", "v1") == good.raw
