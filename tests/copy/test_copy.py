"""The copy engine against real registries: digests, dedupe, mounts, integrity."""

from __future__ import annotations

import hashlib

import pytest

from syncd.config.schema import TagFilter
from syncd.metrics import Metrics
from tests.conftest import IMPLEMENTATIONS
from tests.copy.conftest import make_config, sync
from tests.helpers.images import image, layer, multiarch, push
from tests.helpers.registry import Registry, RegistryFactory, http, manifest_raw, tags

UA = "syncd/"


def sha(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def assert_complete(reg: Registry, repo: str, ref: str) -> None:
    """Every blob and child the manifest references is present at ``reg``."""
    import json

    raw = manifest_raw(reg.url, repo, ref)
    assert raw is not None, f"{repo}:{ref} missing"
    doc = json.loads(raw)
    for child in doc.get("manifests", []):
        assert_complete(reg, repo, child["digest"])
    for blob in [doc.get("config"), *doc.get("layers", [])]:
        if blob:
            status, _, _ = http("HEAD", f"{reg.url}/v2/{repo}/blobs/{blob['digest']}")
            assert status == 200, f"{repo} lacks {blob['digest']}"


# Each implementation once as source and once as target, against distribution (which the
# other tests use throughout); docs/registries.md says what differs between them.
MATRIX = pytest.mark.parametrize(
    ("source", "target"),
    [("distribution", "distribution"), ("zuul", "distribution"), ("distribution", "zuul")],
    indirect=True,
)


@MATRIX
async def test_copy_preserves_digests_of_images_and_indexes(
    source: Registry, target: Registry
) -> None:
    single = image("single", layers=3, docker=True)
    idx = multiarch("multi", ("linux/amd64", "linux/arm64", "linux/arm/v7"))
    push(source.url, "team/app", "v1", single)
    push(source.url, "team/app", "v2", idx)
    result = await sync(make_config(source, [target], ["team/app"]))
    assert result.ok and result.synced == 2
    for tag, img in (("v1", single), ("v2", idx)):
        raw = manifest_raw(target.url, "team/app", tag)
        assert raw == img.raw and sha(raw) == img.digest
        assert_complete(target, "team/app", tag)


@MATRIX
async def test_shared_layers_uploaded_once_and_second_pass_uploads_nothing(
    source: Registry, target: Registry
) -> None:
    base = [layer("base-0", 50_000), layer("base-1", 50_000)]
    for i in range(4):
        push(source.url, "team/app", f"v{i}", image(f"img{i}", layers=1, shared=base))
    cfg = make_config(source, [target], ["team/app"], concurrency=4)
    mark = target.log_mark()
    metrics = Metrics()
    result = await sync(cfg, metrics)
    assert result.ok and result.synced == 4
    uploads = [a for a in target.accesses(mark, UA) if a.kind == "upload_put"]
    digests = [a.path.split("digest=")[1] for a in uploads]
    assert len(digests) == len(set(digests)), "a blob was uploaded twice"
    # 2 shared layers + 4 own layers + 4 configs
    assert len(digests) == 10
    assert result.blobs_copied == 10
    assert metrics.blobs_copied.labels(target="t0")._value.get() == 10

    mark = target.log_mark()
    again = await sync(cfg)
    assert again.ok and again.synced == 0 and again.skipped == 4
    counts = target.counts(mark, UA)
    assert counts["upload_post"] == counts["upload_put"] == counts["manifest_put"] == 0
    # a no-op pass: one manifest HEAD per tag at the target, nothing else (plus a ping,
    # and zuul-registry's token request)
    assert counts["manifest_head"] == 4
    assert sum(counts.values()) - counts["ping"] - counts["token"] == 4


async def test_noop_costs_one_head_per_tag_per_registry(source: Registry, target: Registry) -> None:
    idx = multiarch("noop")
    push(source.url, "a/b", "v1", idx)
    push(source.url, "a/b", "v2", image("noop2"))
    cfg = make_config(source, [target], ["a/b"])
    await sync(cfg)
    # As `syncd once` runs it: a fresh process, nothing to copy.
    smark, tmark = source.log_mark(), target.log_mark()
    result = await sync(cfg, probe_up_to_date=False)
    assert result.skipped == 2
    s, t = source.counts(smark, UA), target.counts(tmark, UA)
    assert s == {"ping": 1, "manifest_head": 2, "tags_list": 1}
    assert t == {"ping": 1, "manifest_head": 2}
    # A daemon's syncer asks once per process whether the source has the referrers API
    # (like the ping), so that it finds referrers attached there to images it copied.
    smark = source.log_mark()
    await sync(cfg)
    assert source.counts(smark, UA)["referrers"] == 1


async def test_mount_between_repositories_of_one_target(source: Registry, target: Registry) -> None:
    base = [layer("mount-base", 100_000)]
    push(source.url, "one/app", "v1", image("m1", layers=1, shared=base))
    push(source.url, "two/app", "v1", image("m2", layers=1, shared=base))
    metrics = Metrics()
    mark = target.log_mark()
    cfg = make_config(source, [target], ["one/app", "two/app"], concurrency=1)
    result = await sync(cfg, metrics)
    assert result.ok and result.synced == 2
    counts = target.counts(mark, UA)
    assert counts["mount"] == 1
    assert result.blobs_mounted == 1
    assert metrics.blobs_mounted.labels(target="t0")._value.get() == 1
    uploads = [a.path for a in target.accesses(mark, UA) if a.kind == "upload_put"]
    assert (
        not any(base[0].digest in p for p in uploads[1:])
        or len([p for p in uploads if base[0].digest in p]) == 1
    )
    assert_complete(target, "two/app", "v1")


async def test_fan_out_reads_each_blob_once(source: Registry, registries: RegistryFactory) -> None:
    t1, t2 = registries(), registries()
    img = image("fan", layers=2, size=200_000)
    push(source.url, "f/o", "v1", img)
    mark = source.log_mark()
    result = await sync(make_config(source, [t1, t2], ["f/o"]))
    assert result.ok and result.synced == 1
    gets = [a for a in source.accesses(mark, UA) if a.kind == "blob_get"]
    assert len(gets) == len(img.blobs)
    for t in (t1, t2):
        assert manifest_raw(t.url, "f/o", "v1") == img.raw


async def test_corrupt_source_blob_aborts_that_image_only(
    source: Registry, target: Registry
) -> None:
    good = image("good", layers=1)
    bad = image("bad", layers=1, size=10_000)
    push(source.url, "c/good", "v1", good)
    push(source.url, "c/bad", "v1", bad)
    path = source.blob_path(bad.layers[0].digest)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    result = await sync(make_config(source, [target], ["c/good", "c/bad"]))
    assert result.failed == 1 and result.synced == 1
    assert "digest mismatch" in " ".join(result.failures)
    assert manifest_raw(target.url, "c/good", "v1") == good.raw
    assert manifest_raw(target.url, "c/bad", "v1") is None
    assert tags(target.url, "c/bad") == []
    status, _, _ = http("HEAD", f"{target.url}/v2/c/bad/blobs/{bad.layers[0].digest}")
    assert status == 404


async def test_explicit_tag_list_and_missing_tag(source: Registry, target: Registry) -> None:
    for t in ("v1", "v2", "v3"):
        push(source.url, "e/x", t, image(f"e-{t}", layers=1, size=100))
    cfg = make_config(source, [target], ["e/x"], tags=TagFilter(names=("v1", "v3", "v9")))
    result = await sync(cfg)
    assert result.synced == 2 and result.failed == 1
    assert tags(target.url, "e/x") == ["v1", "v3"]


@pytest.mark.parametrize("target", IMPLEMENTATIONS, indirect=True)
async def test_overwrite_false_refuses_and_backup_keeps_old(
    source: Registry, target: Registry
) -> None:
    old, new = image("old", layers=1, size=100), image("new", layers=1, size=100)
    push(target.url, "o/w", "v1", old)
    push(source.url, "o/w", "v1", new)
    metrics = Metrics()
    refused = await sync(make_config(source, [target], ["o/w"], overwrite=False), metrics)
    assert refused.failed == 1
    assert manifest_raw(target.url, "o/w", "v1") == old.raw
    assert (
        metrics.image_failures.labels(
            rule="r", target="t0", reason="overwrite_refused"
        )._value.get()
        == 1
    )
    moved = await sync(make_config(source, [target], ["o/w"], backup="{tag}-previous"))
    assert moved.ok and moved.synced == 1
    assert manifest_raw(target.url, "o/w", "v1") == new.raw
    assert manifest_raw(target.url, "o/w", "v1-previous") == old.raw


async def test_platforms_filter_makes_a_new_index(source: Registry, target: Registry) -> None:
    idx = multiarch("pf", ("linux/amd64", "linux/arm64", "linux/s390x"))
    push(source.url, "p/f", "v1", idx)
    cfg = make_config(source, [target], ["p/f"], platforms=("linux/amd64", "linux/arm64"))
    result = await sync(cfg)
    assert result.ok
    import json

    raw = manifest_raw(target.url, "p/f", "v1")
    assert raw is not None and sha(raw) != idx.digest
    plats = [m["platform"]["architecture"] for m in json.loads(raw)["manifests"]]
    assert plats == ["amd64", "arm64"]
    assert_complete(target, "p/f", "v1")
    # stable: the next pass is a no-op
    again = await sync(cfg)
    assert again.skipped == 1 and again.synced == 0


async def test_plan_writes_nothing_and_once_does_what_it_said(
    source: Registry, target: Registry
) -> None:
    img = image("plan", layers=2, size=1000)
    push(source.url, "pl/an", "v1", img)
    cfg = make_config(source, [target], ["pl/an"])
    mark = target.log_mark()
    planned = await sync(cfg, dry_run=True)
    writes = [a for a in target.accesses(mark) if a.method in ("POST", "PUT", "PATCH", "DELETE")]
    assert writes == []
    (entry,) = [e for e in planned.plan if e.action == "copy"]
    assert entry.digest == img.digest
    assert entry.missing_bytes == sum(len(b.data) for b in img.blobs)
    result = await sync(cfg)
    assert result.bytes_copied == entry.missing_bytes
    assert result.blobs_copied == len(entry.missing_blobs)


async def test_target_bytes_follow_what_the_rules_keep(source: Registry, target: Registry) -> None:
    from syncd.sync import open_syncer

    base = [layer("tb-base", 30_000)]
    a = image("tb-a", layers=1, size=10_000, shared=base)
    b = image("tb-b", layers=1, size=20_000, shared=base)
    push(source.url, "t/b", "a", a)
    push(source.url, "t/b", "b", b)
    cfg = make_config(source, [target], ["t/b"])
    metrics = Metrics()

    def gauge() -> float:
        return metrics.target_bytes.labels(target="t0", repository="t/b")._value.get()

    unique = {x.digest: len(x.data) for img in (a, b) for x in img.blobs}
    async with open_syncer(cfg, metrics) as syncer:
        await syncer.run_rule(cfg.rules[0])
        assert gauge() == sum(unique.values())
        # the source drops tag b: the next pass no longer keeps it
        http("DELETE", f"{source.url}/v2/t/b/manifests/{b.digest}")
        await syncer.run_rule(cfg.rules[0])
        assert gauge() == sum(len(x.data) for x in a.blobs)


async def test_layers_shared_within_a_repository_are_checked_once(
    source: Registry, target: Registry
) -> None:
    base = [layer("within-0", 5_000), layer("within-1", 5_000)]
    for i in range(3):
        push(source.url, "w/in", f"v{i}", image(f"within{i}", layers=1, size=500, shared=base))
    mark = target.log_mark()
    result = await sync(make_config(source, [target], ["w/in"], concurrency=1))
    assert result.ok and result.synced == 3
    heads = [a.path for a in target.accesses(mark, UA) if a.kind == "blob_head"]
    assert len(heads) == len(set(heads)), "a blob was checked twice in one pass"
    assert (
        not any(base[0].digest in h for h in heads[1:])
        or heads.count(f"/v2/w/in/blobs/{base[0].digest}") == 1
    )


async def test_concurrent_images_sharing_a_layer_mount_it_across_repositories(
    source: Registry, registries: RegistryFactory
) -> None:
    """Images copied at the same time into sibling repositories upload a shared layer once
    per target registry and mount it everywhere else, also when fanning out to two targets
    (where two copies span the same registries and must not wait on each other)."""
    import asyncio

    t1, t2 = registries(), registries()
    base = [layer("concurrent-base", 2_000_000)]
    repos = [f"c{i}/app" for i in range(4)]
    for i, repo in enumerate(repos):
        push(source.url, repo, "v1", image(f"concurrent{i}", layers=1, shared=base))
    marks = [t1.log_mark(), t2.log_mark()]
    result = await asyncio.wait_for(sync(make_config(source, [t1, t2], repos)), 60)
    assert result.ok and result.synced == 4
    for t, mark in zip((t1, t2), marks, strict=True):
        puts = [a.path for a in t.accesses(mark, UA) if a.kind == "upload_put"]
        assert sum(base[0].digest in p for p in puts) == 1
        assert t.counts(mark, UA)["mount"] == 3
        for repo in repos:
            assert_complete(t, repo, "v1")


async def test_two_rules_copying_one_tag_at_once_push_it_once(
    source: Registry, target: Registry
) -> None:
    """In the daemon rules run side by side; overlapping ones must not push a tag twice."""
    import asyncio
    from dataclasses import replace

    from syncd.sync import open_syncer

    push(source.url, "o/v", "v1", image("overlap", layers=2, size=6_000_000))
    cfg = make_config(source, [target], ["o/v"])
    glob_rule = replace(cfg.rules[0], name="glob", repositories=("o/*",))
    mark = target.log_mark()
    async with open_syncer(cfg, Metrics()) as syncer:
        a, b = await asyncio.gather(syncer.run_rule(cfg.rules[0]), syncer.run_rule(glob_rule))
    assert a.ok and b.ok and a.synced + b.synced == 1 and a.skipped + b.skipped == 1
    counts = target.counts(mark, UA)
    assert counts["manifest_put"] == 1 and counts["upload_put"] == 3


async def test_docker_manifest_list_keeps_its_digest(source: Registry, target: Registry) -> None:
    from tests.helpers.images import DOCKER_LIST, Index

    lst = Index(
        [(image(f"dl-{p}", platform=p, docker=True), p) for p in ("linux/amd64", "linux/arm64")],
        media_type=DOCKER_LIST,
    )
    push(source.url, "d/list", "v1", lst)
    result = await sync(make_config(source, [target], ["d/list"]))
    assert result.ok and result.synced == 1
    raw = manifest_raw(target.url, "d/list", "v1")
    assert raw == lst.raw and sha(raw) == lst.digest
    assert_complete(target, "d/list", "v1")


async def test_tags_sharing_a_manifest_fetch_it_once(source: Registry, target: Registry) -> None:
    """``latest`` and the newest version point at one manifest and are copied at the same
    moment: the source serves that manifest (and each index child) to one GET."""
    idx = multiarch("shared-manifest")
    for tag in ("1.0", "latest", "stable"):
        push(source.url, "s/m", tag, idx)
    mark = source.log_mark()
    result = await sync(make_config(source, [target], ["s/m"]))
    assert result.ok and result.synced == 3
    gets = [a.path for a in source.accesses(mark, UA) if a.kind == "manifest_get"]
    assert len(gets) == len(set(gets)) == 1 + len(idx.children), gets
    for tag in ("1.0", "latest", "stable"):
        assert_complete(target, "s/m", tag)


async def test_two_tags_of_one_index_push_each_child_once(
    source: Registry, target: Registry
) -> None:
    # A second PUT of a child while the other tag's index PUT reads its link made
    # distribution refuse that index (DIGEST_INVALID + MANIFEST_BLOB_UNKNOWN) in a cold
    # benchmark pass; children are now pushed once per repository at a time.
    idx = multiarch("twin", ("linux/amd64", "linux/arm64", "linux/s390x"))
    for tag in ("1.0", "latest", "stable"):
        push(source.url, "twin/app", tag, idx)
    mark = target.log_mark()
    result = await sync(make_config(source, [target], ["twin/app"]), probe_up_to_date=False)
    assert result.ok and result.synced == 3
    child_puts = [
        a.path
        for a in target.accesses(mark, UA)
        if a.kind == "manifest_put" and "/manifests/sha256:" in a.path
    ]
    assert sorted(child_puts) == sorted(set(child_puts)) and len(child_puts) == 3
    for tag in ("1.0", "latest", "stable"):
        assert manifest_raw(target.url, "twin/app", tag) == idx.raw


async def test_concurrency_bounds_the_images_copied_at_once(
    source: Registry, target: Registry
) -> None:
    # ``concurrency`` counts images being copied; the checks of the next ones may run
    # alongside (twice as many), but a copy starts only when one has ended.
    repos = [f"conc{n}/app" for n in range(4)]
    for n, repo in enumerate(repos):
        push(source.url, repo, "v1", image(f"conc-{n}", layers=2))
    mark = target.log_mark()
    result = await sync(make_config(source, [target], repos, concurrency=1))
    assert result.ok and result.synced == 4
    writes = [
        a.path.split("/")[2]
        for a in target.accesses(mark, UA)
        if a.kind.startswith("upload_") or a.kind in ("mount", "manifest_put")
    ]
    # One image after another: each repository's writes are one unbroken run.
    runs = [w for i, w in enumerate(writes) if i == 0 or writes[i - 1] != w]
    assert len(runs) == len(set(runs)) == 4, writes
