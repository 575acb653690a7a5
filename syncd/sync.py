"""One pass of a rule: list, filter, copy with bounded concurrency, account, summarise.

Failures are isolated: one broken image, repository or target is recorded and the pass
goes on. Metrics are updated as each image finishes, not only at the end of the pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from syncd.blobs import Endpoint
from syncd.config.schema import Config, RuleConfig
from syncd.copy import CopyEngine, ImageResult, TargetSpec
from syncd.errors import NotFoundError, SyncdError, failure_reason
from syncd.manifest import Descriptor
from syncd.ownership import LOCAL, Ownership
from syncd.referrers import ReferrerSync, is_referrer_tag
from syncd.registry.client import ManifestInfo
from syncd.registry.pool import ClientPool
from syncd.rules import (
    is_glob,
    is_immutable,
    repository_matches,
    select_repositories,
    select_tags,
    target_repository,
)

if TYPE_CHECKING:
    from syncd.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PlanEntry:
    """One image at one target, as ``plan`` reports it."""

    rule: str
    source: str
    tag: str
    source_digest: str
    digest: str
    target: str
    # up_to_date | copy | overwrite_refused | filtered | failed | immutable | referrer | unsigned
    action: str
    missing_blobs: list[Descriptor] = field(default_factory=list)
    missing_manifests: int = 0
    filtered_index: bool = False
    error: str = ""
    referrer_type: str = ""  # action "referrer": the artifactType of what would be copied

    @property
    def missing_bytes(self) -> int:
        return sum(b.size for b in self.missing_blobs)


@dataclass(slots=True)
class RulePassResult:
    """The outcome of one pass of one rule."""

    rule: str
    synced: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    blobs_copied: int = 0
    blobs_mounted: int = 0
    blobs_skipped: int = 0
    bytes_copied: int = 0
    referrers_copied: int = 0
    fenced: int = 0  # images not started because this replica lost its cluster lease
    failures: list[str] = field(default_factory=list)
    plan: list[PlanEntry] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.fenced == 0

    def add(self, other: RulePassResult) -> None:
        self.synced += other.synced
        self.skipped += other.skipped
        self.failed += other.failed
        self.blobs_copied += other.blobs_copied
        self.blobs_mounted += other.blobs_mounted
        self.blobs_skipped += other.blobs_skipped
        self.bytes_copied += other.bytes_copied
        self.referrers_copied += other.referrers_copied
        self.failures.extend(other.failures)
        self.plan.extend(other.plan)


@dataclass(frozen=True, slots=True)
class _Job:
    repository: str
    tag: str
    targets: tuple[tuple[str, str], ...]  # (registry name, target repository)
    referrer_tags: frozenset[str] = frozenset()  # sha256-<hex>[.sig|.att|.sbom] of the repo


class Syncer:
    """Runs rules against the registries of one config."""

    def __init__(
        self,
        config: Config,
        pool: ClientPool,
        engine: CopyEngine,
        metrics: Metrics | None = None,
        *,
        track_target_bytes: bool = True,
        probe_up_to_date: bool = True,
    ) -> None:
        self.config = config
        self.ownership: Ownership = LOCAL  # a cluster's replaces it (syncd/ownership.py)
        self.pool = pool
        self.engine = engine
        self.metrics = metrics
        self.track_target_bytes = track_target_bytes
        self.referrers = ReferrerSync(engine, metrics, probe_up_to_date=probe_up_to_date)
        # (target, repository) -> (rule, tag) -> {blob digest: size}; for syncd_target_bytes
        self._kept: dict[tuple[str, str], dict[tuple[str, str], dict[str, int]]] = {}
        # Called after each image of a pass (the CLI's progress display).
        self.progress: Callable[[str, RulePassResult], None] | None = None

    # -- a whole pass ----------------------------------------------------------------------
    async def run_pass(
        self, rules: Sequence[RuleConfig] | None = None, *, dry_run: bool = False
    ) -> list[RulePassResult]:
        """Every rule once, in order (a repository two rules share is then a no-op)."""
        results = []
        for rule in rules if rules is not None else self.config.rules:
            results.append(await self.run_rule(rule, dry_run=dry_run))
        return results

    async def run_rule(
        self,
        rule: RuleConfig,
        *,
        repositories: Collection[str] | None = None,
        dry_run: bool = False,
    ) -> RulePassResult:
        """One pass of one rule; ``repositories`` limits it (webhook-triggered passes)."""
        start = time.monotonic()
        result = RulePassResult(rule.name)
        source = self.pool.client(rule.source).with_retries(rule.retries)
        try:
            repos = await self._repositories(rule, repositories)
            repos = await self.ownership.select(rule.name, repos, complete=repositories is None)
        except SyncdError as e:
            self._fail_rule(rule, result, f"listing {rule.source}: {e}", e)
            repos = []
        queue: asyncio.Queue[_Job | None] = asyncio.Queue(maxsize=rule.concurrency * 2)
        # (target, target repository) -> the tags this pass selected there
        chosen: dict[tuple[str, str], set[str]] = {}

        async def produce() -> None:
            try:
                for repo in repos:
                    try:
                        async for job in self._jobs(
                            rule, source.name, repo, result, dry_run, chosen
                        ):
                            await queue.put(job)
                    except SyncdError as e:
                        self._fail_rule(rule, result, f"{rule.source}/{repo}: {e}", e)
            finally:
                for _ in range(rule.concurrency):
                    await queue.put(None)

        async def work() -> None:
            while (job := await queue.get()) is not None:
                if self.ownership.may_write():  # else fenced: the unit's next owner copies it
                    await self._run_job(rule, job, result, dry_run)
                else:
                    result.fenced += 1

        async with asyncio.TaskGroup() as tg:
            tg.create_task(produce())
            for _ in range(rule.concurrency):
                tg.create_task(work())
        result.seconds = time.monotonic() - start
        if not dry_run:
            self._forget_unkept(rule, chosen)
            self._finish_rule(rule, result)
        return result

    def _forget_unkept(self, rule: RuleConfig, chosen: dict[tuple[str, str], set[str]]) -> None:
        """Drop byte accounting for tags this rule no longer selects (deleted, filtered)."""
        for key, tags in chosen.items():
            kept = self._kept.get(key, {})
            for rule_name, tag in list(kept):
                if rule_name == rule.name and tag not in tags:
                    del kept[(rule_name, tag)]

    def _fail_rule(
        self, rule: RuleConfig, result: RulePassResult, text: str, err: BaseException
    ) -> None:
        result.failed += 1
        result.failures.append(text)
        log.error(text, extra={"rule": rule.name, "event": "rule_error"})
        if self.metrics:
            for target in rule.targets:
                self.metrics.image_failures.labels(
                    rule=rule.name, target=target, reason=failure_reason(err)
                ).inc()

    def _finish_rule(self, rule: RuleConfig, result: RulePassResult) -> None:
        if self.metrics:
            self.metrics.sync_duration.labels(rule=rule.name).observe(result.seconds)
            self.metrics.last_pass_failures.labels(rule=rule.name).set(result.failed)
            if result.ok:
                self.metrics.last_success.labels(rule=rule.name).set(time.time())
            if self.track_target_bytes:
                for (target, repo), kept in self._kept.items():
                    unique: dict[str, int] = {}
                    for blobs in kept.values():
                        unique.update(blobs)
                    self.metrics.target_bytes.labels(target=target, repository=repo).set(
                        sum(unique.values())
                    )
        log.info(
            "rule %s: %d synced, %d skipped, %d failed in %.1fs",
            rule.name,
            result.synced,
            result.skipped,
            result.failed,
            result.seconds,
            extra={
                "rule": rule.name,
                "event": "rule_pass",
                "synced": result.synced,
                "skipped": result.skipped,
                "failed": result.failed,
                "seconds": round(result.seconds, 3),
            },
        )

    # -- listing -----------------------------------------------------------------------------
    async def _repositories(self, rule: RuleConfig, only: Collection[str] | None) -> list[str]:
        patterns = rule.repositories
        if only is not None:
            # A webhook names repositories; keep those the rule covers.
            return sorted(r for r in only if any(repository_matches(p, r) for p in patterns))
        catalog: list[str] = []
        if any(is_glob(p) for p in patterns):
            catalog = await self.pool.client(rule.source).with_retries(rule.retries).catalog()
        return select_repositories(patterns, catalog)

    async def _jobs(
        self,
        rule: RuleConfig,
        source_name: str,
        repo: str,
        result: RulePassResult,
        dry_run: bool,
        chosen: dict[tuple[str, str], set[str]],
    ) -> AsyncIterator[_Job]:
        source = self.pool.client(source_name).with_retries(rule.retries)
        # A repository the rule names exactly must exist; one found through a glob does.
        exact = repo in rule.repositories
        all_tags = await source.tags_list(repo, missing_ok=not exact)
        if not all_tags and not rule.tags.names:
            log.warning(
                "%s/%s has no tags",
                source_name,
                repo,
                extra={"rule": rule.name, "repository": repo, "event": "empty_repository"},
            )
        # Referrer tags travel with their subject (syncd/referrers.py), not as images (nor
        # are they gated as images); with both off they are tags like any other.
        referrer_tags = frozenset(t for t in all_tags if is_referrer_tag(t))
        as_images = not (rule.referrers or rule.require_signature)
        listed = all_tags if as_images else [t for t in all_tags if t not in referrer_tags]
        tags = select_tags(listed, rule.tags)
        if rule.tags.names:
            # An explicitly named tag that the source lacks is an error, not a filter.
            present = set(all_tags)
            for missing in (t for t in rule.tags.names if t not in present):
                e = NotFoundError(f"tag {missing} not found", registry=source_name, repository=repo)
                self._record_failure(
                    rule, result, f"{source_name}/{repo}:{missing}", e, rule.targets
                )
        if dry_run:
            selected = set(tags)
            for t in listed:
                if t not in selected:
                    result.plan.append(
                        PlanEntry(rule.name, f"{source_name}/{repo}", t, "", "", "", "filtered")
                    )
        targets = tuple((name, target_repository(rule, repo)) for name in rule.targets)
        for key in targets:
            chosen.setdefault(key, set()).update(tags)
        immutable_present: dict[tuple[str, str], set[str]] = {}
        if rule.immutable_tags and any(is_immutable(rule, t) for t in tags):
            for name, trepo in targets:
                client = self.pool.client(name).with_retries(rule.retries)
                immutable_present[(name, trepo)] = set(await client.tags_list(trepo))
        for tag in tags:
            wanted = tuple(
                (name, trepo)
                for name, trepo in targets
                if not (is_immutable(rule, tag) and tag in immutable_present.get((name, trepo), ()))
            )
            if not wanted:
                result.skipped += 1
                if dry_run:
                    for name, trepo in targets:
                        result.plan.append(
                            PlanEntry(
                                rule.name,
                                f"{source_name}/{repo}",
                                tag,
                                "",
                                "",
                                f"{name}/{trepo}",
                                "immutable",
                            )
                        )
                continue
            yield _Job(repo, tag, wanted, referrer_tags)

    # -- one image -----------------------------------------------------------------------------
    def _refuse_unsigned(
        self,
        rule: RuleConfig,
        job: _Job,
        result: RulePassResult,
        source: str,
        head: ManifestInfo | None,
        unsigned: SyncdError,
        dry_run: bool,
    ) -> None:
        """``require_signature``: the image is not copied; plan says so, a pass counts it."""
        if not dry_run:
            self._record_failure(
                rule, result, f"{source}:{job.tag}", unsigned, [t for t, _ in job.targets]
            )
            return
        digest = head.digest if head else ""
        for name, trepo in job.targets:
            result.plan.append(
                PlanEntry(
                    rule.name,
                    source,
                    job.tag,
                    digest,
                    digest,
                    f"{name}/{trepo}",
                    "unsigned" if head else "failed",
                    error=str(unsigned),
                )
            )
        result.failed += 1

    async def _run_job(
        self, rule: RuleConfig, job: _Job, result: RulePassResult, dry_run: bool
    ) -> None:
        source = Endpoint(self.pool.client(rule.source).with_retries(rule.retries), job.repository)
        specs = [
            TargetSpec(
                Endpoint(self.pool.client(name).with_retries(rule.retries), trepo),
                job.tag,
                overwrite=rule.overwrite,
                backup=rule.backup,
                recheck=rule.target_recheck,
            )
            for name, trepo in job.targets
        ]
        # -- referrers (syncd/referrers.py): signature gate before the copy, artifacts after
        refs = self.referrers.for_job(rule, source, job.referrer_tags)
        # The target HEADs go out alongside the source's HEAD (refs.resolve), not after it.
        looked = self.engine.look_ahead(specs)
        try:
            head = await refs.resolve(job.tag) if refs.active else None
            unsigned = await refs.unsigned(job.tag, head) if rule.require_signature else None
            if unsigned is not None:
                self._refuse_unsigned(rule, job, result, str(source), head, unsigned, dry_run)
                return
            image = await self.engine.copy_image(
                source,
                job.tag,
                specs,
                platforms=rule.platforms,
                source_digest=head.digest if head else None,
                dry_run=dry_run,
                looked=looked,
            )
        finally:
            await looked.close()
        planned: list[PlanEntry] = []
        if head is not None and rule.referrers and image.error is None:
            carried = await refs.carry(head, image, specs, dry_run=dry_run)
            result.referrers_copied += carried.copied
            for r, target in carried.planned:
                planned.append(
                    PlanEntry(
                        rule.name,
                        str(source),
                        job.tag,
                        r.subject,
                        r.digest,
                        target,
                        "referrer",
                        referrer_type=r.artifact_type,
                    )
                )
        # -- end referrers
        if dry_run:
            await self._plan_entries(rule, source, job, image, specs, result)
            result.plan.extend(planned)
            return
        self._account(rule, job, image, result)
        if self.progress:
            self.progress(rule.name, result)
        if self.track_target_bytes and not image.failed and image.digest:
            await self._track_bytes(rule, source, job, image)

    def _account(
        self, rule: RuleConfig, job: _Job, image: ImageResult, result: RulePassResult
    ) -> None:
        name = f"{image.source}:{job.tag}"
        if image.error is not None:
            self._record_failure(rule, result, name, image.error, [t for t, _ in job.targets])
            return
        copied = False
        failed = False
        for o in image.outcomes:
            result.blobs_copied += o.blobs_copied
            result.blobs_mounted += o.blobs_mounted
            result.blobs_skipped += o.blobs_skipped
            result.bytes_copied += o.bytes_copied
            event = {
                "event": "image_copy",
                "rule": rule.name,
                "source": name,
                "target": f"{o.target}/{o.repository}:{job.tag}",
                "digest": image.digest,
                "bytes": o.bytes_copied,
                "seconds": round(o.seconds, 3),
                "result": o.action,
            }
            if o.action == "copied":
                copied = True
                if self.metrics:
                    self.metrics.images_synced.labels(rule=rule.name, target=o.target).inc()
                log.info(
                    "copied %s to %s (%s, %d bytes)",
                    name,
                    event["target"],
                    image.digest,
                    o.bytes_copied,
                    extra=event,
                )
            elif o.action == "failed":
                failed = True
                assert o.error is not None
                event["reason"] = failure_reason(o.error)
                if self.metrics:
                    self.metrics.image_failures.labels(
                        rule=rule.name, target=o.target, reason=failure_reason(o.error)
                    ).inc()
                result.failures.append(f"{name} -> {o.target}/{o.repository}: {o.error}")
                log.error("failed %s to %s: %s", name, event["target"], o.error, extra=event)
            else:
                log.debug("up to date: %s at %s", name, event["target"], extra=event)
        if failed:
            result.failed += 1
        elif copied:
            result.synced += 1
        else:
            result.skipped += 1

    def _record_failure(
        self,
        rule: RuleConfig,
        result: RulePassResult,
        name: str,
        err: BaseException,
        targets: Iterable[str],
    ) -> None:
        result.failed += 1
        result.failures.append(f"{name}: {err}")
        log.error(
            "failed %s: %s",
            name,
            err,
            extra={
                "event": "image_copy",
                "rule": rule.name,
                "source": name,
                "result": "failed",
                "reason": failure_reason(err),
            },
        )
        if self.metrics:
            for target in targets:
                self.metrics.image_failures.labels(
                    rule=rule.name, target=target, reason=failure_reason(err)
                ).inc()

    async def _track_bytes(
        self, rule: RuleConfig, source: Endpoint, job: _Job, image: ImageResult
    ) -> None:
        try:
            m = image.manifest or await self.engine.manifest(source, image.digest)
            blobs: dict[str, int] = {}
            for part in [m, *(await self.engine.children(source, m) if m.is_index else [])]:
                blobs.update((b.digest, b.size) for b in part.blobs)
        except SyncdError as e:
            log.debug("cannot account bytes of %s: %s", image.source, e)
            return
        for name, trepo in job.targets:
            self._kept.setdefault((name, trepo), {})[(rule.name, job.tag)] = blobs

    async def _plan_entries(
        self,
        rule: RuleConfig,
        source: Endpoint,
        job: _Job,
        image: ImageResult,
        specs: Sequence[TargetSpec],
        result: RulePassResult,
    ) -> None:
        filtered = bool(rule.platforms) and image.digest != image.source_digest

        def entry_for(target: str, action: str) -> PlanEntry:
            return PlanEntry(
                rule.name,
                str(source),
                job.tag,
                image.source_digest,
                image.digest,
                target,
                action,
                filtered_index=filtered,
            )

        if image.error is not None:
            for name, trepo in job.targets:
                entry = entry_for(f"{name}/{trepo}", "failed")
                entry.error = str(image.error)
                result.plan.append(entry)
            result.failed += 1
            return
        any_copy = False
        for spec, o in zip(specs, image.outcomes, strict=True):
            entry = entry_for(f"{o.target}/{o.repository}", o.action)
            if o.action == "failed":
                entry.action = failure_reason(o.error) if o.error else "failed"
                entry.error = str(o.error)
                if entry.action != "overwrite_refused":
                    entry.action = "failed"
                result.failed += 1
            elif o.action == "copy":
                any_copy = True
                try:
                    m = image.manifest or await self.engine.desired(
                        source, image.source_digest, rule.platforms
                    )
                    blobs, manifests = await self.engine.missing(source, spec.endpoint, m)
                    entry.missing_blobs, entry.missing_manifests = blobs, manifests
                except SyncdError as e:
                    entry.action, entry.error = "failed", str(e)
            result.plan.append(entry)
        if any_copy:
            result.synced += 1
        else:
            result.skipped += 1


@asynccontextmanager
async def open_syncer(
    config: Config,
    metrics: Metrics | None = None,
    *,
    track_target_bytes: bool = True,
    probe_up_to_date: bool = True,
) -> AsyncIterator[Syncer]:
    """A Syncer with one HTTP session per registry, closed on exit.

    ``probe_up_to_date=False`` (one-shot commands): an image found up to date does not make
    the once-per-registry referrers-API probe; see ``ReferrerSync``.
    """
    async with ClientPool(config.registries, metrics=metrics) as pool:
        yield Syncer(
            config,
            pool,
            CopyEngine(metrics),
            metrics,
            track_target_bytes=track_target_bytes,
            probe_up_to_date=probe_up_to_date,
        )
