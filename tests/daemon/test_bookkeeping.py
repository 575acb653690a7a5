"""No source pulls spent on bookkeeping: a daemon started against a target that is already
in sync makes no manifest GET at the source in its first pass (its access log), yet
``syncd_target_bytes`` is filled in, from the target."""

from __future__ import annotations

from pathlib import Path

from tests.daemon.conftest import DaemonFactory, wait_until, write_config
from tests.helpers.images import image, multiarch, push
from tests.helpers.passes import make_config, sync
from tests.helpers.registry import Registry


async def test_first_pass_against_a_synced_target_pulls_no_source_manifest(
    source: Registry, target: Registry, daemons: DaemonFactory, tmp_path: Path
) -> None:
    single, multi = image("book-1", layers=2), multiarch("book-2")
    push(source.url, "book/app", "v1", single)
    push(source.url, "book/multi", "v1", multi)
    seeded = await sync(make_config(source, [target], ["book/app", "book/multi"]))
    assert seeded.ok and seeded.synced == 2
    cfg = write_config(
        tmp_path / "config.yaml",
        {"src": source.url, "dst": target.url},
        [
            {
                "name": "book",
                "source": "src",
                "targets": ["dst"],
                "repositories": ["book/app", "book/multi"],
                "interval": "1h",
            }
        ],
    )
    mark = source.log_mark()
    d = daemons(cfg)
    d.wait_ready()
    wait_until(lambda: any(e.get("event") == "rule_pass" for e in d.logs()), 20, "the first pass")
    (first,) = [e for e in d.logs() if e.get("event") == "rule_pass"]
    assert first["skipped"] == 2 and first["failed"] == 0
    counts = source.counts(mark, agent="syncd/")
    assert counts["manifest_get"] == 0, counts
    assert counts["manifest_head"] == 2 and counts["blob_get"] == 0
    expected = sum(len(b.data) for b in single.blobs)
    assert d.metric("syncd_target_bytes", target="dst", repository="book/app") == expected
    multi_bytes = d.metric("syncd_target_bytes", target="dst", repository="book/multi")
    assert multi_bytes == sum(len(b.data) for b in {b.digest: b for b in multi.blobs}.values())
    assert d.stop() == 0
