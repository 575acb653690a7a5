"""A fresh process finds where a missing blob already lives at the target (issue 9)."""

from __future__ import annotations

from tests.copy.conftest import make_config, sync
from tests.helpers.images import image, layer, multiarch, push
from tests.helpers.registry import Registry, manifest_raw

UA = "syncd/"


async def test_a_layer_of_an_up_to_date_index_child_is_mounted(
    source: Registry, target: Registry
) -> None:
    base = [layer("loc-base", 30_000)]
    push(source.url, "loc/multi", "v1", multiarch("loc-m", shared=base))
    cfg = make_config(source, [target], ["loc/multi", "loc/single"])
    await sync(cfg, probe_up_to_date=False)  # loc/single is not at the source yet: fails
    single = image("loc-s", layers=1, shared=base)
    push(source.url, "loc/single", "v1", single)

    smark, tmark = source.log_mark(), target.log_mark()
    result = await sync(cfg, probe_up_to_date=False)  # a new syncer: nothing remembered
    assert result.ok and result.synced == 1 and result.skipped == 1
    assert result.blobs_mounted == 1 and result.blobs_copied == 2
    t = target.counts(tmark, UA)
    assert t["mount"] == 1 and t["upload_post"] == 2 and t["upload_put"] == 2
    # The index and its two children were read to learn their blobs, at the target (the
    # source's pulls may be rate-limited): 3 GETs, once. The source served only the image.
    assert t["manifest_get"] == 3
    assert source.counts(smark, UA)["manifest_get"] == 1
    assert manifest_raw(target.url, "loc/single", "v1") == single.raw


async def test_nothing_is_read_when_no_blob_is_missing(source: Registry, target: Registry) -> None:
    push(source.url, "loc2/a", "v1", image("loc2-a"))
    push(source.url, "loc2/b", "v1", image("loc2-b"))
    cfg = make_config(source, [target], ["loc2/a", "loc2/b"])
    await sync(cfg, probe_up_to_date=False)
    smark, tmark = source.log_mark(), target.log_mark()
    assert (await sync(cfg, probe_up_to_date=False)).skipped == 2
    assert "manifest_get" not in source.counts(smark, UA)
    assert "manifest_get" not in target.counts(tmark, UA)


async def test_a_wrong_guess_costs_no_request(source: Registry, target: Registry) -> None:
    push(source.url, "loc3/a", "v1", image("loc3-a"))
    cfg = make_config(source, [target], ["loc3/a", "loc3/b"])
    await sync(cfg, probe_up_to_date=False)
    push(source.url, "loc3/b", "v1", image("loc3-b", layers=2))
    tmark = target.log_mark()
    result = await sync(cfg, probe_up_to_date=False)
    assert result.ok and result.synced == 1
    t = target.counts(tmark, UA)
    # 3 blobs unknown everywhere: HEAD, POST, PUT each; no mount attempted.
    assert "mount" not in t
    assert t["blob_head"] == t["upload_post"] == t["upload_put"] == 3
