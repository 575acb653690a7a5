"""``prune``: deletions at the targets, against distribution with deletes enabled."""

from __future__ import annotations

import shutil
from pathlib import Path

from syncd.config.schema import TagFilter
from syncd.metrics import Metrics
from tests.helpers.images import image, multiarch, push
from tests.helpers.registry import Registry, RegistryFactory, tags
from tests.state.conftest import delete_tag, digest_of_tag, once, stateful, value


def seed(reg: Registry, repo: str, names: list[str], prefix: str) -> dict[str, str]:
    return {n: push(reg.url, repo, n, image(f"{prefix}-{n}", layers=1)) for n in names}


async def test_a_tag_gone_from_the_source_is_deleted_and_nothing_else(
    tmp_path: Path, source: Registry, target: Registry
) -> None:
    seed(source, "pr/app", ["v1", "v2", "v3"], "pa")
    cfg = stateful(tmp_path, source, [target], ["pr/app"], prune="deleted")
    assert (await once(cfg)).synced == 3
    push(target.url, "pr/app", "by-hand", image("pa-hand", layers=1))  # not syncd's
    delete_tag(source.url, "pr/app", "v1")
    metrics = Metrics()
    result = await once(cfg, metrics)
    assert result.ok and result.deleted == 1 and result.deleted_by_target == {"t0": 1}
    assert tags(target.url, "pr/app") == ["by-hand", "v2", "v3"]
    assert value(metrics, "syncd_tags_deleted_total", rule="r", target="t0") == 1
    again = await once(cfg)
    assert again.ok and again.deleted == 0


async def test_unselected_follows_newest_and_deleted_does_not(
    tmp_path: Path, registries: RegistryFactory, source: Registry
) -> None:
    seed(source, "pn/app", ["1.0.0", "1.1.0", "1.2.0"], "pn")
    newest = TagFilter(newest=2)
    t_unsel, t_del = registries(), registries()
    unsel = stateful(tmp_path / "a", source, [t_unsel], ["pn/app"], tags=newest, prune="unselected")
    dele = stateful(tmp_path / "b", source, [t_del], ["pn/app"], tags=newest, prune="deleted")
    for cfg in (unsel, dele):
        assert (await once(cfg)).synced == 2
    seed(source, "pn/app", ["1.3.0"], "pn")
    r1, r2 = await once(unsel), await once(dele)
    assert r1.ok and r1.deleted == 1 and r2.ok and r2.deleted == 0
    assert tags(t_unsel.url, "pn/app") == ["1.2.0", "1.3.0"]
    assert tags(t_del.url, "pn/app") == ["1.1.0", "1.2.0", "1.3.0"]


async def test_changed_protected_and_unknown_tags_stay(
    tmp_path: Path, source: Registry, target: Registry
) -> None:
    seed(source, "pk/app", ["a", "b", "c", "keep"], "pk")
    cfg = stateful(tmp_path, source, [target], ["pk/app"], prune="deleted", protect=("^c$",))
    assert (await once(cfg)).synced == 4
    push(target.url, "pk/app", "a", image("pk-someone-else", layers=1))  # moved by a person
    push(target.url, "pk/app", "d", image("pk-d", layers=1))  # never syncd's
    for tag in ("a", "b", "c"):
        delete_tag(source.url, "pk/app", tag)
    metrics = Metrics()
    result = await once(cfg, metrics)
    assert result.ok and result.deleted == 1
    assert tags(target.url, "pk/app") == ["a", "c", "d", "keep"]
    skipped = "syncd_deletions_skipped_total"
    assert value(metrics, skipped, rule="r", target="t0", reason="changed") == 1
    assert value(metrics, skipped, rule="r", target="t0", reason="protected") == 1


async def test_an_empty_source_listing_deletes_nothing(
    tmp_path: Path, source: Registry, target: Registry
) -> None:
    seed(source, "pe/app", ["v1", "v2"], "pe")
    cfg = stateful(tmp_path, source, [target], ["pe/app"], prune="deleted")
    assert (await once(cfg)).synced == 2
    for tag in ("v1", "v2"):
        delete_tag(source.url, "pe/app", tag)
    result = await once(cfg)
    assert result.deleted == 0
    assert any("listed no tags" in n for n in result.notes)
    assert tags(target.url, "pe/app") == ["v1", "v2"]


async def test_over_max_deletions_nothing_is_deleted(
    tmp_path: Path, source: Registry, target: Registry
) -> None:
    seed(source, "pm/app", ["v1", "v2", "v3", "v4"], "pm")
    cfg = stateful(tmp_path, source, [target], ["pm/app"], prune="deleted", max_deletions=2)
    assert (await once(cfg)).synced == 4
    for tag in ("v1", "v2", "v3"):
        delete_tag(source.url, "pm/app", tag)
    metrics = Metrics()
    held = await once(cfg, metrics)
    assert held.ok and held.deleted == 0
    assert any("exceed max_deletions 2" in n for n in held.notes)
    assert tags(target.url, "pm/app") == ["v1", "v2", "v3", "v4"]
    assert value(metrics, "syncd_prune_held_back", rule="r", target="t0") == 1
    reason = {"rule": "r", "target": "t0", "reason": "max_deletions"}
    assert value(metrics, "syncd_deletions_skipped_total", **reason) == 3
    raised = stateful(tmp_path, source, [target], ["pm/app"], prune="deleted", max_deletions=3)
    done = await once(raised, metrics)
    assert done.deleted == 3 and tags(target.url, "pm/app") == ["v4"]
    assert value(metrics, "syncd_prune_held_back", rule="r", target="t0") == 0


async def test_a_digest_another_tag_shares_is_not_deleted(
    tmp_path: Path, source: Registry, target: Registry
) -> None:
    one = image("ps-one", layers=1)
    for tag in ("v1", "alias", "old-a", "old-b"):
        push(
            source.url, "ps/app", tag, one if tag in ("v1", "alias") else image("ps-old", layers=1)
        )
    push(source.url, "ps/app", "x", image("ps-x", layers=1))
    cfg = stateful(tmp_path, source, [target], ["ps/app"], prune="unselected")
    assert (await once(cfg)).synced == 5
    # alias leaves the selection but shares v1's digest; old-a and old-b leave together.
    narrow = stateful(
        tmp_path,
        source,
        [target],
        ["ps/app"],
        prune="unselected",
        tags=TagFilter(include=("^v", "^x$")),
    )
    push(target.url, "ps/app", "by-hand", image("ps-x", layers=1))  # a person's tag on x
    metrics = Metrics()
    result = await once(narrow, metrics)
    assert result.ok and result.deleted == 2, result.notes
    assert tags(target.url, "ps/app") == ["alias", "by-hand", "v1", "x"]
    reason = {"rule": "r", "target": "t0", "reason": "shared"}
    assert value(metrics, "syncd_deletions_skipped_total", **reason) == 1
    # x leaves too now: a tag syncd never wrote (by-hand) points at it, so it stays.
    narrower = stateful(
        tmp_path, source, [target], ["ps/app"], prune="unselected", tags=TagFilter(include=("^v",))
    )
    result = await once(narrower, metrics)
    assert result.deleted == 0 and "x" in tags(target.url, "ps/app")
    assert value(metrics, "syncd_deletions_skipped_total", **reason) == 3


async def test_a_child_of_a_kept_index_is_not_deleted(
    tmp_path: Path, source: Registry, target: Registry
) -> None:
    index = multiarch("pc-m")
    push(source.url, "pc/app", "multi", index)
    child = index.children[0][0]
    push(source.url, "pc/app", "amd64", child)
    cfg = stateful(tmp_path, source, [target], ["pc/app"], prune="unselected")
    assert (await once(cfg)).synced == 2
    narrow = stateful(
        tmp_path, source, [target], ["pc/app"], prune="unselected", tags=TagFilter(names=("multi",))
    )
    result = await once(narrow)
    assert result.ok and result.deleted == 0
    assert digest_of_tag(target.url, "pc/app", "amd64") == child.digest


async def test_a_registry_refusing_deletes_is_one_note_not_a_failure(
    tmp_path: Path, registries: RegistryFactory, source: Registry
) -> None:
    target = registries(delete=False)
    seed(source, "pu/app", ["v1", "v2", "v3"], "pu")
    cfg = stateful(tmp_path, source, [target], ["pu/app"], prune="deleted")
    assert (await once(cfg)).synced == 3
    delete_tag(source.url, "pu/app", "v1")
    delete_tag(source.url, "pu/app", "v2")
    metrics = Metrics()
    result = await once(cfg, metrics)
    assert result.ok and result.failed == 0 and result.deleted == 0
    assert len([n for n in result.notes if "refuses deletes" in n]) == 1
    assert tags(target.url, "pu/app") == ["v1", "v2", "v3"]
    reason = {"rule": "r", "target": "t0", "reason": "unsupported"}
    assert value(metrics, "syncd_deletions_skipped_total", **reason) == 2


async def test_a_target_recreated_empty_makes_no_wrong_deletion_and_no_failure(
    tmp_path: Path, source: Registry, target: Registry
) -> None:
    seed(source, "pz/app", ["v1", "v2"], "pz")
    cfg = stateful(tmp_path, source, [target], ["pz/app"], prune="deleted")
    assert (await once(cfg)).synced == 2
    target.stop()
    for child in target.root.iterdir():
        shutil.rmtree(child)
    target.start()
    push(target.url, "pz/app", "v1", image("pz-other", layers=1))  # someone else's v1 now
    delete_tag(source.url, "pz/app", "v1")
    result = await once(cfg)
    assert result.ok and result.deleted == 0 and result.synced == 1  # v2 copied again
    assert tags(target.url, "pz/app") == ["v1", "v2"]


async def test_dry_run_plans_deletions_and_makes_none(
    tmp_path: Path, source: Registry, target: Registry
) -> None:
    seed(source, "pd/app", ["v1", "v2"], "pd")
    cfg = stateful(tmp_path, source, [target], ["pd/app"], prune="deleted")
    await once(cfg)
    delete_tag(source.url, "pd/app", "v1")
    planned = await once(cfg, dry_run=True)
    deletes = [(e.tag, e.target) for e in planned.plan if e.action == "delete"]
    assert deletes == [("v1", "t0/pd/app")]
    assert tags(target.url, "pd/app") == ["v1", "v2"]
    assert (await once(cfg)).deleted == 1
