"""Chunked, resumable uploads of large blobs, with the break caused by a real proxy.

Measured against Debian's distribution 2.8.2: a break before any byte of the next PATCH
reached the registry (a dropped keep-alive connection, a registry restarted between
chunks) resumes at the registry's offset; a break in the middle of a PATCH body does not,
because 2.8 keeps the partial bytes and then refuses (and cancels) the session whose signed
state names the old offset, so syncd starts a fresh session, and the blob still arrives
whole and verified.
"""

from __future__ import annotations

import hashlib
import threading

from syncd.metrics import Metrics
from tests.faults.conftest import MB, UA, IntegrityPoller, big_image, config_for, sync, wait_for
from tests.faults.shims import RateLimitShim
from tests.helpers.images import push
from tests.helpers.registry import Registry, RegistryFactory, manifest_raw

BLOB = 60 * MB


def stored_sha(reg: Registry, digest: str) -> str:
    h = hashlib.sha256()
    with reg.blob_path(digest).open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def overhead(img_bytes: int, sent: int) -> int:
    """Bytes relayed beyond the image's own: headers, plus whatever was sent twice."""
    return sent - img_bytes


async def test_break_between_chunks_resumes_and_resends_almost_nothing(
    source: Registry, target: Registry, proxies: object
) -> None:
    img = big_image("resume", BLOB)
    push(source.url, "big/app", "v1", img)
    proxy = proxies(target.port)  # type: ignore[operator]
    # After ~30 MB the connection is dropped as it starts its next request, so nothing of
    # that request reaches the registry: what an idle keep-alive connection killed by a
    # middlebox looks like.
    proxy.cut_after(30 * MB, at_boundary=True)
    metrics = Metrics()
    mark = target.log_mark()
    with IntegrityPoller(target.url) as poller:
        result = await sync(config_for(source.url, [proxy.url], ["big/app"]), metrics)
    assert result.ok and result.synced == 1, result.failures
    assert proxy.cuts == 1
    image_bytes = sum(len(b.data) for b in img.blobs) + len(img.raw)
    extra = overhead(image_bytes, proxy.bytes_up)
    dropped = proxy.bytes_in - proxy.bytes_up
    print(f"\nbetween-chunks cut: relayed {proxy.bytes_up} for {image_bytes}: {extra} extra;")
    print(f"sent into the dropped connection: {dropped}")
    assert extra < 1 * MB, "the upload started over instead of resuming"
    # Even counting what syncd wrote into the dead connection, far less than one chunk.
    assert extra + dropped < 16 * MB
    counts = target.counts(mark, UA)
    assert counts["upload_post"] == 2  # the config blob and the layer: no second session
    assert counts["upload_get"] == 1  # one status query, answered with the offset
    assert counts["upload_patch"] == 3  # 60 MB in 16 MiB chunks: three PATCHes + the PUT
    assert metrics.retries.labels(registry="t0")._value.get() >= 1
    assert stored_sha(target, img.layers[0].digest) == img.layers[0].digest
    assert manifest_raw(target.url, "big/app", "v1") == img.raw
    assert poller.violations == [] and poller.sweeps > 0


async def test_break_inside_a_chunk_starts_afresh_on_distribution_2_8(
    source: Registry, target: Registry, proxies: object
) -> None:
    img = big_image("midbody", BLOB)
    push(source.url, "big/app", "v1", img)
    proxy = proxies(target.port)  # type: ignore[operator]
    proxy.cut_after(30 * MB)  # mid-PATCH: the registry keeps part of the chunk
    mark = target.log_mark()
    with IntegrityPoller(target.url) as poller:
        result = await sync(config_for(source.url, [proxy.url], ["big/app"]))
    assert result.ok and result.synced == 1, result.failures
    accesses = target.accesses(mark, UA)
    status = [a for a in accesses if a.kind == "upload_get"]
    # 2.8 answers the status query with BLOB_UPLOAD_INVALID (404) and drops the session.
    assert [a.status for a in status] == [404]
    assert sum(1 for a in accesses if a.kind == "upload_post") == 3  # config, layer, layer again
    image_bytes = sum(len(b.data) for b in img.blobs) + len(img.raw)
    extra = overhead(image_bytes, proxy.bytes_up)
    print(f"\nmid-chunk cut: relayed {proxy.bytes_up} bytes for {image_bytes}: {extra} extra")
    assert 29 * MB < extra < 31 * MB  # exactly what was lost, sent again
    assert stored_sha(target, img.layers[0].digest) == img.layers[0].digest
    assert poller.violations == []


async def test_target_restart_between_chunks_resumes(
    source: Registry, registries: RegistryFactory, proxies: object
) -> None:
    # A graceful stop (SIGTERM, connections drained) lets the PATCH in flight finish; the
    # registry comes back on the same storage and http.secret, and the upload goes on.
    target = registries(http={"draintimeout": "3s"})
    img = big_image("restart", BLOB)
    push(source.url, "big/app", "v1", img)
    proxy = proxies(target.port)  # type: ignore[operator]
    restarted = threading.Event()

    def restart_when_half_sent() -> None:
        wait_for(lambda: proxy.bytes_up > 25 * MB, 30, "25 MB relayed")
        target.restart()
        restarted.set()

    mark = target.log_mark()
    t = threading.Thread(target=restart_when_half_sent, daemon=True)
    t.start()
    with IntegrityPoller(target.url) as poller:
        result = await sync(config_for(source.url, [proxy.url], ["big/app"]))
    t.join(30)
    assert restarted.is_set()
    assert result.ok and result.synced == 1, result.failures
    image_bytes = sum(len(b.data) for b in img.blobs) + len(img.raw)
    extra = overhead(image_bytes, proxy.bytes_up)
    print(f"\nrestart: relayed {proxy.bytes_up} bytes for {image_bytes}: {extra} extra")
    assert extra < 17 * MB  # at most the chunk in flight, never the whole blob
    counts = target.counts(mark, UA)
    assert counts["upload_post"] == 2, counts
    assert stored_sha(target, img.layers[0].digest) == img.layers[0].digest
    assert poller.violations == []


async def test_fan_out_of_a_large_blob_reads_the_source_once(
    source: Registry, registries: RegistryFactory
) -> None:
    targets = [registries(), registries()]
    img = big_image("fan", 40 * MB)
    push(source.url, "big/app", "v1", img)
    smark = source.log_mark()
    marks = [t.log_mark() for t in targets]
    result = await sync(config_for(source.url, [t.url for t in targets], ["big/app"]))
    assert result.ok and result.synced == 1, result.failures
    gets = [a for a in source.accesses(smark, UA) if a.kind == "blob_get"]
    assert len(gets) == 2  # the layer once and the config once, for both targets
    for t, m in zip(targets, marks, strict=True):
        counts = t.counts(m, UA)
        # 40 MB in 16 MiB chunks: PATCH, PATCH, then the last chunk in the PUT; the small
        # config blob stays monolithic (POST + PUT).
        assert counts["upload_patch"] == 2 and counts["upload_put"] == 2, counts
        assert stored_sha(t, img.layers[0].digest) == img.layers[0].digest


async def test_resume_works_when_the_source_ignores_range(
    source: Registry, target: Registry, proxies: object
) -> None:
    img = big_image("norange", 40 * MB)
    push(source.url, "big/app", "v1", img)
    shim = RateLimitShim(source.url, ignore_range=True)
    try:
        proxy = proxies(target.port)  # type: ignore[operator]
        proxy.cut_after(20 * MB, at_boundary=True)
        mark = target.log_mark()
        result = await sync(config_for(shim.url, [proxy.url], ["big/app"]))
    finally:
        shim.close()
    assert result.ok and result.synced == 1, result.failures
    assert proxy.cuts == 1
    counts = target.counts(mark, UA)
    assert counts["upload_post"] == 2 and counts["upload_get"] == 1  # resumed, not redone
    gets = [p for _, m, p in shim.forwarded if m == "GET" and img.layers[0].digest in p]
    # The first read; the ranged one, answered 200 and hung up on; a re-read from byte 0
    # (hashed, and only the part the target lacks sent).
    assert len(gets) == 3
    image_bytes = sum(len(b.data) for b in img.blobs) + len(img.raw)
    assert proxy.bytes_up - image_bytes < 1 * MB
    assert stored_sha(target, img.layers[0].digest) == img.layers[0].digest
