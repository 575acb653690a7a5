"""A layout as a target across passes: only what is new is read and written, a pass with
nothing new changes nothing, tags move under the overwrite/backup policies, and metrics
name the layout like a registry."""

from __future__ import annotations

from pathlib import Path

from syncd.metrics import Metrics
from tests.helpers import passes
from tests.helpers.images import image, layer, multiarch, push
from tests.helpers.registry import Registry
from tests.layout.conftest import REF_NAME, index_json, layout_tags


async def test_second_pass_reads_nothing_and_writes_nothing(
    source: Registry, tmp_path: Path
) -> None:
    base = layer("inc-base", 8192)
    v1 = image("inc-1", shared=[base])
    push(source.url, "app", "v1", v1)
    push(source.url, "app", "v2", multiarch("inc-2", shared=[base]))
    oci = tmp_path / "oci"
    cfg = passes.make_config(source, [f"oci:{oci}"], ["app"])
    first = await passes.sync(cfg)
    assert (first.synced, first.failed) == (2, 0), first.failures
    index = oci / "app" / "index.json"
    before = (index.read_bytes(), index.stat().st_mtime_ns, index.stat().st_ino)

    mark = source.log_mark()
    again = await passes.sync(cfg)
    assert (again.synced, again.skipped, again.failed) == (0, 2, 0)
    counts = source.counts(mark)
    assert counts["blob_get"] == 0 and counts["manifest_get"] == 0
    assert (index.read_bytes(), index.stat().st_mtime_ns, index.stat().st_ino) == before
    assert not [p for p in (oci / "app" / ".syncd-tmp").iterdir() if p.name != "lock"]

    # A new tag sharing the base layer: only its own blobs are read from the source.
    v3 = image("inc-3", shared=[base], layers=1)
    push(source.url, "app", "v3", v3)
    mark = source.log_mark()
    third = await passes.sync(cfg)
    assert (third.synced, third.skipped) == (1, 2)
    got = sorted(a.path.rsplit("/", 1)[1] for a in source.accesses(mark) if a.kind == "blob_get")
    assert got == sorted(b.digest for b in v3.blobs if b.digest != base.digest)
    assert third.blobs_copied == 2 and third.blobs_skipped == 1
    assert layout_tags(oci / "app")["v3"] == v3.digest


async def test_moved_tag_replaces_its_entry_and_backup_keeps_the_old(
    source: Registry, tmp_path: Path
) -> None:
    old, new = image("mv-old"), image("mv-new")
    push(source.url, "app", "v1", old)
    push(source.url, "app", "v0", image("mv-other"))
    oci = tmp_path / "oci"
    cfg = passes.make_config(source, [f"oci:{oci}"], ["app"], backup="{tag}-previous")
    assert (await passes.sync(cfg)).failed == 0
    order = [e["annotations"][REF_NAME] for e in index_json(oci / "app")["manifests"]]

    push(source.url, "app", "v1", new)
    result = await passes.sync(cfg)
    assert result.failed == 0, result.failures
    entries = index_json(oci / "app")["manifests"]
    names = [e["annotations"][REF_NAME] for e in entries]
    # The tag's entry is replaced where it stood, never duplicated.
    assert names[: len(order)] == order and names.count("v1") == 1
    assert layout_tags(oci / "app")["v1"] == new.digest
    assert layout_tags(oci / "app")["v1-previous"] == old.digest

    refuse = passes.make_config(source, [f"oci:{oci}"], ["app"], overwrite=False)
    push(source.url, "app", "v1", image("mv-newer"))
    metrics = Metrics()
    refused = await passes.sync(refuse, metrics)
    assert refused.failed == 1 and "overwrite refused" in refused.failures[0]
    assert layout_tags(oci / "app")["v1"] == new.digest
    failures = metrics.registry.get_sample_value(
        "syncd_image_failures_total", {"rule": "r", "target": "t0", "reason": "overwrite_refused"}
    )
    assert failures == 1


async def test_metrics_and_plan_name_the_layout_like_a_registry(
    source: Registry, tmp_path: Path
) -> None:
    img = image("met-1", layers=2)
    push(source.url, "team/app", "v1", img)
    oci = tmp_path / "oci"
    cfg = passes.make_config(source, [f"oci:{oci}"], ["team/app"])
    plan = await passes.sync(cfg, dry_run=True)
    [entry] = plan.plan
    assert (entry.action, entry.target) == ("copy", "t0/team/app")
    assert sorted(b.digest for b in entry.missing_blobs) == sorted(b.digest for b in img.blobs)
    assert not oci.exists()  # a plan writes nothing, not even an empty layout

    metrics = Metrics()
    assert (await passes.sync(cfg, metrics, track=True)).synced == 1

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert sample("syncd_images_synced_total", rule="r", target="t0") == 1
    assert sample("syncd_blobs_copied_total", target="t0") == 3
    assert sample("syncd_blob_bytes_copied_total", target="t0") == sum(
        len(b.data) for b in img.blobs
    )
    assert sample("syncd_manifest_pushes_total", target="t0", repository="team/app") == 1
    assert sample("syncd_target_bytes", target="t0", repository="team/app") == sum(
        len(b.data) for b in img.blobs
    )


async def test_a_file_system_error_fails_that_image_not_the_pass(
    source: Registry, tmp_path: Path
) -> None:
    push(source.url, "app", "v1", image("fs-1"))
    push(source.url, "tool", "v1", image("fs-2"))
    oci = tmp_path / "oci"
    oci.mkdir()
    (oci / "app").write_text("a file where the layout's directory would go")
    result = await passes.sync(passes.make_config(source, [f"oci:{oci}"], ["app", "tool"]))
    assert (result.synced, result.failed) == (1, 1), result.failures
    [failure] = result.failures
    assert "app:v1" in failure and str(oci / "app") in failure
    assert layout_tags(oci / "tool") == {"v1": image("fs-2").digest}
