"""Retention at the targets: delete the tags a rule wrote that its source no longer has.

``prune: deleted`` deletes a target tag whose source tag is gone; ``prune: unselected`` also
one the rule's filters no longer select (rolled out of ``newest: N``). A tag is deleted only
when every one of these holds, checked in this order on each pass:

1. the source listing of its repository succeeded in this pass and is not empty (an empty
   listing of a repository syncd wrote tags from is taken as a fault, not as intent);
2. the state store records that this rule pushed or confirmed the tag at this target;
3. ``protect`` does not match it;
4. a HEAD at the target answers the digest recorded (someone else's change is left alone);
5. no other tag of the target repository points at that digest or at an index that lists it:
   distribution deletes by digest, and that removes every tag pointing at it (distribution
   docs, "Deleting an Image"), so a shared digest is skipped and reported;
6. the rule's deletions at this target this pass are at most ``max_deletions``; over it,
   none is made (and ``syncd_prune_held_back`` says so until a pass is under it again).

A registry refusing deletes (405 ``UNSUPPORTED``) ends the deletions at that target for the
pass with one note, not a failed image. Every tag not deleted for one of these reasons is
counted in ``syncd_deletions_skipped_total{reason}``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from syncd.config.schema import RuleConfig
from syncd.endpoint import Endpoint, registry_of
from syncd.errors import ClientRequestError, SyncdError
from syncd.manifest import INDEX_TYPES
from syncd.registry.pool import ClientPool
from syncd.rules import target_repository
from syncd.state import StateStore, TagRecord
from syncd.storage import ImageStore, ManifestHead

if TYPE_CHECKING:
    from syncd.copy import CopyEngine
    from syncd.metrics import Metrics

log = logging.getLogger(__name__)

# HEADs of a target repository's other tags in flight at once (the shared-digest check).
HEAD_CONCURRENCY = 8


@dataclass(frozen=True, slots=True)
class Listing:
    """What the source said about one repository in this pass (only when it answered)."""

    repository: str
    tags: frozenset[str]  # every tag listed
    selected: frozenset[str]  # those the rule's filters selected


@dataclass(frozen=True, slots=True)
class PlannedDeletion:
    """A line of ``plan`` about one tag prune looked at (dry runs only)."""

    source: str  # source registry/repository
    tag: str
    digest: str
    target: str  # target registry name/repository
    action: str  # delete | keep | delete_held
    reason: str = ""  # why kept: protected, changed, shared, source_empty, max_deletions, ...


@dataclass(slots=True)
class PruneOutcome:
    """What one rule's prune did (or, in a dry run, would do)."""

    deleted_by_target: dict[str, int] = field(default_factory=dict)
    # What a person should hear about that is not a failed image, one line each.
    notes: list[str] = field(default_factory=list)
    planned: list[PlannedDeletion] = field(default_factory=list)

    @property
    def deleted(self) -> int:
        return sum(self.deleted_by_target.values())


@dataclass(slots=True)
class _Deletion:
    repository: str  # at the target
    source: str  # the source repository, for plan
    digest: str
    tags: list[str] = field(default_factory=list)


class Pruner:
    """Runs the deletions of one rule's pass, after its copies."""

    def __init__(
        self,
        pool: ClientPool,
        store: StateStore,
        engine: CopyEngine,
        metrics: Metrics | None = None,
    ) -> None:
        self.pool = pool
        self.store = store
        self.engine = engine
        self.metrics = metrics

    async def prune(
        self, rule: RuleConfig, listings: Sequence[Listing], *, dry_run: bool = False
    ) -> PruneOutcome:
        """Delete (or, with ``dry_run``, plan) what ``rule`` may delete at each target."""
        result = PruneOutcome()
        if rule.prune is None:
            return result
        for target in rule.targets:
            client = self.pool.client(target).with_retries(rule.retries)
            try:
                await self._target(rule, target, client, listings, result, dry_run)
            except SyncdError as e:
                # Listing the target failed: nothing is deleted there this pass.
                self._note(rule, target, result, f"prune of {target} stopped: {e}")
        return result

    async def _target(
        self,
        rule: RuleConfig,
        target: str,
        client: ImageStore,
        listings: Sequence[Listing],
        result: PruneOutcome,
        dry_run: bool,
    ) -> None:
        approved: list[_Deletion] = []
        for listing in listings:
            trepo = target_repository(rule, listing.repository)
            t = Endpoint(client, trepo)
            records = self.store.tag_list(rule.name, registry_of(t), trepo)
            keep = listing.tags if rule.prune == "deleted" else listing.selected
            gone = sorted(tag for tag in records if tag not in keep)
            if not gone:
                continue
            if not listing.tags:
                self._skip(rule, target, result, gone, "source_empty", dry_run, listing, trepo)
                self._note(
                    rule,
                    target,
                    result,
                    f"{rule.source}/{listing.repository} listed no tags: nothing deleted from "
                    f"{target}/{trepo} (an empty listing of a repository with tags is taken "
                    "as a fault)",
                )
                continue
            approved += await self._check(rule, target, t, listing, gone, records, result, dry_run)
        count = sum(len(d.tags) for d in approved)
        held = count > rule.max_deletions
        if self.metrics and not dry_run:
            self.metrics.prune_held_back.labels(rule=rule.name, target=target).set(int(held))
        if held:
            self._note(
                rule,
                target,
                result,
                f"{count} deletions at {target} exceed max_deletions {rule.max_deletions}: "
                "none made this pass (raise max_deletions or check the source)",
            )
            for d in approved:
                self._skip(rule, target, result, d.tags, "max_deletions", dry_run, d, d.repository)
            return
        for i, d in enumerate(approved):
            if dry_run:
                for tag in d.tags:
                    result.planned.append(
                        self._entry(rule, target, d.source, d.repository, tag, d.digest, "delete")
                    )
                continue
            try:
                deleted = await client.manifest_delete(d.repository, d.digest)
            except ClientRequestError as e:
                if e.status != 405 and not any(x.code == "UNSUPPORTED" for x in e.details):
                    raise
                self._note(
                    rule,
                    target,
                    result,
                    f"{target} refuses deletes ({e.status} UNSUPPORTED): nothing deleted "
                    "there this pass; enable deletion at the registry (distribution: "
                    "storage.delete.enabled) or turn prune off for this rule",
                )
                for rest in approved[i:]:
                    self._skip(rule, target, result, rest.tags, "unsupported", False)
                return
            except SyncdError as e:
                log.warning("prune: deleting %s/%s@%s: %s", target, d.repository, d.digest, e)
                self._skip(rule, target, result, d.tags, "error", False)
                continue
            t = Endpoint(client, d.repository)
            for tag in d.tags:
                self.store.tag_delete(rule.name, registry_of(t), d.repository, tag)
            if deleted:
                self._deleted(rule, target, d, result)

    async def _check(
        self,
        rule: RuleConfig,
        target: str,
        t: Endpoint,
        listing: Listing,
        gone: list[str],
        records: dict[str, TagRecord],
        result: PruneOutcome,
        dry_run: bool,
    ) -> list[_Deletion]:
        """The deletions of ``gone`` at ``t`` that pass checks 3 to 5."""
        registry = registry_of(t)
        protected = [tag for tag in gone if any(re.search(p, tag) for p in rule.protect)]
        self._skip(rule, target, result, protected, "protected", dry_run, listing, t.repository)
        asked = [tag for tag in gone if tag not in protected]
        heads = await _heads(t, asked)
        by_digest: dict[str, _Deletion] = {}
        for tag in asked:
            head = heads.get(tag)
            wanted = records[tag].digest
            if isinstance(head, BaseException):
                log.warning("prune: cannot read %s:%s: %s", t, tag, head)
                self._skip(rule, target, result, [tag], "error", dry_run, listing, t.repository)
            elif head is None:
                # Gone already (deleted by someone, or with a shared digest earlier).
                if not dry_run:
                    self.store.tag_delete(rule.name, registry, t.repository, tag)
            elif head.digest != wanted:
                # Someone else moved the tag: it is theirs now, and stays.
                self._skip(rule, target, result, [tag], "changed", dry_run, listing, t.repository)
                if not dry_run:
                    self.store.tag_delete(rule.name, registry, t.repository, tag)
            else:
                d = by_digest.setdefault(
                    head.digest, _Deletion(t.repository, listing.repository, head.digest)
                )
                d.tags.append(tag)
        if not by_digest:
            return []
        shared = await self._referenced_elsewhere(
            t, {tag for d in by_digest.values() for tag in d.tags}
        )
        out = []
        for digest, d in by_digest.items():
            if digest in shared:
                self._skip(rule, target, result, d.tags, "shared", dry_run, listing, t.repository)
                log.info(
                    "prune: %s:%s not deleted: another tag of %s points at %s",
                    t,
                    ",".join(d.tags),
                    t,
                    digest,
                    extra={"rule": rule.name, "event": "prune_skip", "reason": "shared"},
                )
            else:
                out.append(d)
        return out

    async def _referenced_elsewhere(self, t: Endpoint, leaving: set[str]) -> set[str]:
        """Digests that a tag of ``t`` not in ``leaving`` points at, directly or as a child
        of an index (a deletion by digest would take that tag, or break its index)."""
        tags = await t.client.tags_list(t.repository)
        others = [tag for tag in tags if tag not in leaving]
        heads = await _heads(t, others)
        out: set[str] = set()
        for tag in others:
            head = heads.get(tag)
            if isinstance(head, BaseException):
                raise head  # cannot tell what it points at: delete nothing here
            if head is None:
                continue
            out.add(head.digest)
            if head.media_type in INDEX_TYPES:
                index = await self.engine.manifest(t, head.digest)
                out.update(c.digest for c in index.children)
        return out

    # -- accounting ---------------------------------------------------------------------------
    def _deleted(self, rule: RuleConfig, target: str, d: _Deletion, result: PruneOutcome) -> None:
        n = len(d.tags)
        result.deleted_by_target[target] = result.deleted_by_target.get(target, 0) + n
        if self.metrics:
            self.metrics.tags_deleted.labels(rule=rule.name, target=target).inc(n)
        for tag in d.tags:
            log.info(
                "deleted %s/%s:%s (%s)",
                target,
                d.repository,
                tag,
                d.digest,
                extra={
                    "rule": rule.name,
                    "event": "tag_deleted",
                    "target": f"{target}/{d.repository}:{tag}",
                    "digest": d.digest,
                },
            )

    def _skip(
        self,
        rule: RuleConfig,
        target: str,
        result: PruneOutcome,
        tags: Iterable[str],
        reason: str,
        dry_run: bool,
        where: Listing | _Deletion | None = None,
        trepo: str = "",
    ) -> None:
        tags = list(tags)
        if not tags:
            return
        if dry_run:
            source = (
                where.repository if isinstance(where, Listing) else getattr(where, "source", "")
            )
            action = "delete_held" if reason == "max_deletions" else "keep"
            for tag in tags:
                result.planned.append(
                    self._entry(rule, target, source, trepo, tag, "", action, reason)
                )
            return
        if self.metrics:
            self.metrics.deletions_skipped.labels(rule=rule.name, target=target, reason=reason).inc(
                len(tags)
            )

    def _entry(
        self,
        rule: RuleConfig,
        target: str,
        source: str,
        trepo: str,
        tag: str,
        digest: str,
        action: str,
        reason: str = "",
    ) -> PlannedDeletion:
        return PlannedDeletion(
            f"{rule.source}/{source}", tag, digest, f"{target}/{trepo}", action, reason
        )

    def _note(self, rule: RuleConfig, target: str, result: PruneOutcome, text: str) -> None:
        result.notes.append(f"rule {rule.name}: {text}")
        log.warning(text, extra={"rule": rule.name, "target": target, "event": "prune"})


async def _heads(
    t: Endpoint, tags: Sequence[str]
) -> dict[str, ManifestHead | BaseException | None]:
    """A HEAD of each tag, a few at a time; an error is the answer of its tag."""
    gate = asyncio.Semaphore(HEAD_CONCURRENCY)

    async def one(tag: str) -> ManifestHead | None:
        async with gate:
            return await t.client.manifest_head(t.repository, tag)

    got = await asyncio.gather(*(one(tag) for tag in tags), return_exceptions=True)
    for g in got:
        if isinstance(g, asyncio.CancelledError):
            raise g
    return dict(zip(tags, got, strict=True))
