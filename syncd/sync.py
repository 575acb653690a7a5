"""One pass of a rule: list, filter, copy with bounded concurrency, account, summarise.

Failures are isolated: one broken image, repository or target is recorded and the pass
goes on. Metrics are updated as each image finishes, not only at the end of the pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from syncd.accounting import Accounting
from syncd.config.schema import Config, RuleConfig
from syncd.copy import CopyEngine
from syncd.copy_result import ImageResult, TargetSpec
from syncd.endpoint import Endpoint
from syncd.errors import CatalogUnsupportedError, NotFoundError, SyncdError
from syncd.ownership import LOCAL, Ownership
from syncd.plan import PlanEntry, plan_entries
from syncd.prune import Listing, PruneOutcome, Pruner
from syncd.referrers import ReferrerSync, is_referrer_tag
from syncd.registry.pool import ClientPool
from syncd.report import rule_report
from syncd.results import RulePassResult as RulePassResult
from syncd.rules import (
    is_glob,
    is_immutable,
    names_tag,
    repository_matches,
    select_repositories,
    select_tags,
    target_repository,
)
from syncd.state import StateStore
from syncd.state_sqlite import open_state
from syncd.storage import ManifestHead
from syncd.sync_quota import left_alone, new_tags_first
from syncd.target_bytes import TargetBytes

if TYPE_CHECKING:
    from syncd.metrics import Metrics

log = logging.getLogger(__name__)


# Images checked at a time per image copied at a time (see ``Syncer.run_rule``).
CHECKS_PER_COPY = 2


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
        referrers: ReferrerSync | None = None,
    ) -> None:
        self.config = config
        self.ownership: Ownership = LOCAL  # a cluster's replaces it (syncd/ownership.py)
        self.pool = pool
        self.engine = engine
        self.metrics = metrics
        self.track_target_bytes = track_target_bytes
        self.referrers = referrers or ReferrerSync(
            engine, metrics, probe_up_to_date=probe_up_to_date
        )
        self.store = engine.store
        # Whether closing this Syncer closes the store (a reload hands it to the next).
        self.owns_store = True
        self.pruner = Pruner(pool, engine.store, engine, metrics)
        self._bytes = TargetBytes(engine.store)
        self.account = Accounting(metrics)
        # Called after each image of a pass (the CLI's progress display).
        self.progress: Callable[[str, RulePassResult], None] | None = None

    def inherit(self, previous: Syncer) -> None:
        """Carry the byte accounting of targets this config still has."""
        self._bytes.inherit(previous._bytes, self.config.registries)

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
        result = RulePassResult(rule.name, started=time.time())
        for name in rule.targets:
            result.at(name)  # every target appears in the report, even with nothing to do
        source = self.pool.client(rule.source).with_retries(rule.retries)
        skip = left_alone(self.pool, rule)
        try:
            repos = [] if skip else await self._repositories(rule, repositories)
            repos = await self.ownership.select(rule.name, repos, complete=repositories is None)
        except SyncdError as e:
            self.account.listing_failed(rule, result, rule.source, e, prefix="listing ")
            repos = []
        if skip:
            self.account.listing_failed(
                rule, result, skip.registry or rule.source, skip, prefix="pass skipped: "
            )
        # ``concurrency`` images are copied at a time (the gate); CHECKS_PER_COPY times as
        # many are checked at a time: a check is two HEADs and some bookkeeping, and while
        # one worker does the bookkeeping the others keep the registry connections
        # (max_concurrency) busy.
        workers = CHECKS_PER_COPY * rule.concurrency
        gate = asyncio.Semaphore(rule.concurrency)
        queue: asyncio.Queue[_Job | None] = asyncio.Queue(maxsize=workers * 2)
        # (target, target repository) -> the tags this pass selected there
        chosen: dict[tuple[str, str], set[str]] = {}
        # what the source answered for each repository (what prune may act on)
        listings: list[Listing] = []

        async def produce() -> None:
            try:
                for repo in repos:
                    try:
                        async for job in self._jobs(
                            rule, source.name, repo, result, dry_run, chosen, listings
                        ):
                            await queue.put(job)
                    except SyncdError as e:
                        self.account.listing_failed(rule, result, f"{rule.source}/{repo}", e)
            finally:
                for _ in range(workers):
                    await queue.put(None)

        async def work() -> None:
            while (job := await queue.get()) is not None:
                if self.ownership.may_write():  # else fenced: the unit's next owner copies it
                    await self._run_job(rule, job, result, dry_run, gate)
                else:
                    result.fenced += 1

        async with asyncio.TaskGroup() as tg:
            tg.create_task(produce())
            for _ in range(workers):
                tg.create_task(work())
        if rule.prune is not None:
            self._take_prune(rule, result, await self.pruner.prune(rule, listings, dry_run=dry_run))
        self.store.flush()
        result.seconds = time.monotonic() - start
        result.finished = time.time()
        if not dry_run:
            self._bytes.forget_unkept(rule.name, chosen)
            self._finish_rule(rule, result)
        return result

    @staticmethod
    def _take_prune(rule: RuleConfig, result: RulePassResult, pruned: PruneOutcome) -> None:
        result.deleted += pruned.deleted
        for target, n in pruned.deleted_by_target.items():
            result.deleted_by_target[target] = result.deleted_by_target.get(target, 0) + n
        result.notes.extend(pruned.notes)
        result.plan.extend(
            PlanEntry(rule.name, p.source, p.tag, "", p.digest, p.target, p.action, error=p.reason)
            for p in pruned.planned
        )

    def _finish_rule(self, rule: RuleConfig, result: RulePassResult) -> None:
        # The last report of every rule outlives the process: ``syncd status`` reads it
        # when no daemon answers.
        self.store.save_report(rule.name, rule_report(result))
        if self.metrics:
            self.metrics.sync_duration.labels(rule=rule.name).observe(result.seconds)
            self.metrics.last_pass_failures.labels(rule=rule.name).set(result.failed)
            if result.ok:
                self.metrics.last_success.labels(rule=rule.name).set(time.time())
            if self.track_target_bytes:
                self._bytes.publish(self.metrics)
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
        globs = [p for p in patterns if is_glob(p)]
        if globs:
            try:
                catalog = await self.pool.client(rule.source).with_retries(rule.retries).catalog()
            except CatalogUnsupportedError as e:
                # Say so, instead of a rule that silently matches nothing.
                raise CatalogUnsupportedError(
                    f"{e.message}: rule {rule.name!r} cannot expand {', '.join(globs)}; "
                    "list the repositories by name",
                    status=e.status,
                ) from None
        return select_repositories(patterns, catalog)

    async def _jobs(
        self,
        rule: RuleConfig,
        source_name: str,
        repo: str,
        result: RulePassResult,
        dry_run: bool,
        chosen: dict[tuple[str, str], set[str]],
        listings: list[Listing],
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
        # are they gated as images). With ``referrers: false`` they are not copied at all,
        # unless the tag filter asks for them by name or by an include pattern.
        referrer_tags = frozenset(t for t in all_tags if is_referrer_tag(t))
        carried = rule.referrers or rule.require_signature
        listed = [
            t
            for t in all_tags
            if t not in referrer_tags or (not carried and names_tag(rule.tags, t))
        ]
        tags = select_tags(listed, rule.tags)
        listings.append(Listing(repo, frozenset(all_tags), frozenset(tags)))
        if rule.tags.names:
            # An explicitly named tag that the source lacks is an error, not a filter.
            present = set(all_tags)
            for missing in (t for t in rule.tags.names if t not in present):
                err = _missing_tag_error(source_name, repo, missing)
                where = tuple((t, target_repository(rule, repo)) for t in rule.targets)
                self.account.failure(
                    rule, result, f"{source_name}/{repo}:{missing}", err, where, missing
                )
        if dry_run:
            selected = set(tags)
            for t in listed:
                if t not in selected:
                    result.plan.append(
                        PlanEntry(rule.name, f"{source_name}/{repo}", t, "", "", "", "filtered")
                    )
        targets = tuple((name, target_repository(rule, repo)) for name in rule.targets)
        tags = await new_tags_first(self.pool, rule, tags, targets)
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
            for name, trepo in targets:
                if (name, trepo) not in wanted:  # immutable and present: up to date by rule
                    result.at(name).up_to_date += 1
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
        head: ManifestHead | None,
        unsigned: SyncdError,
        dry_run: bool,
    ) -> None:
        """``require_signature``: the image is not copied; plan says so, a pass counts it."""
        if not dry_run:
            digest = head.digest if head else ""
            self.account.failure(
                rule, result, f"{source}:{job.tag}", unsigned, job.targets, job.tag, digest
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
        self,
        rule: RuleConfig,
        job: _Job,
        result: RulePassResult,
        dry_run: bool,
        gate: asyncio.Semaphore,
    ) -> None:
        source = Endpoint(self.pool.client(rule.source).with_retries(rule.retries), job.repository)
        specs = [
            TargetSpec(
                Endpoint(self.pool.client(name).with_retries(rule.retries), trepo),
                job.tag,
                overwrite=rule.overwrite,
                backup=rule.backup,
                recheck=rule.target_recheck,
                rule=rule.name,
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
                gate=gate,
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
            entries, failed, any_copy = await plan_entries(
                self.engine, rule, source, job.tag, job.targets, image, specs
            )
            result.plan.extend(entries)
            result.failed += failed
            if any_copy:
                result.synced += 1
            else:
                result.skipped += 1
            result.plan.extend(planned)
            return
        self.account.image(rule, job.tag, job.targets, image, result)
        if self.progress:
            self.progress(rule.name, result)
        if self.track_target_bytes and not image.failed and image.digest:
            await self._bytes.track(
                self.engine,
                rule.name,
                lambda: self._holder(rule, source, image),
                job.tag,
                job.targets,
                image,
            )

    def _holder(self, rule: RuleConfig, source: Endpoint, image: ImageResult) -> Endpoint:
        """Where to read an image's manifests for bookkeeping: a target that holds it, not
        the source (Docker Hub counts manifest GETs against its pull quota)."""
        for o in image.outcomes:
            if o.action in ("up_to_date", "copied") and o.digest:
                return Endpoint(self.pool.client(o.target).with_retries(rule.retries), o.repository)
        return source


def _missing_tag_error(registry: str, repo: str, tag: str) -> SyncdError:
    return NotFoundError(f"tag {tag} not found", registry=registry, repository=repo)


async def _open_state(config: Config, metrics: Metrics | None) -> StateStore:
    if config.cluster is None:
        return await asyncio.to_thread(open_state, config)
    # The replicas of a cluster share one store in etcd (imported only in cluster mode).
    from syncd.cluster.store import EtcdStore

    shared = EtcdStore(config.cluster, metrics=metrics)
    await shared.start()
    return shared


async def _close_state(store: StateStore) -> None:
    aclose = getattr(store, "aclose", None)  # the etcd store sends its last writes first
    if aclose is not None:
        await aclose()
    else:
        store.close()


@asynccontextmanager
async def open_syncer(
    config: Config,
    metrics: Metrics | None = None,
    *,
    track_target_bytes: bool = True,
    probe_up_to_date: bool = True,
    previous: Syncer | None = None,
) -> AsyncIterator[Syncer]:
    """A Syncer with one HTTP session per registry, closed on exit;
    ``probe_up_to_date=False`` (one-shot commands): an image found up to date does not make
    the once-per-registry referrers-API probe; see ``ReferrerSync``. The state store of
    ``config.state`` is opened for the Syncer's life (``syncd.state_sqlite``).

    ``previous`` (a config reload): the new Syncer keeps what that one learned: the
    clients (sessions, tokens) of registries whose config is unchanged, the copy engine
    (manifest and blob-location caches, and its one-copy-at-a-time bookkeeping, so a
    pass of the old config and one of the new never copy the same tag at once), the
    state store (unless ``state.path`` changed), the referrers-API answers and the byte
    accounting. What was learned about a registry whose config changed is forgotten.
    """
    keep = previous is not None and previous.config.state == config.state
    syncer: Syncer | None = None
    store = previous.store if previous is not None and keep else None
    if store is None:
        store = await _open_state(config, metrics)
    try:
        async with ClientPool(config.registries, metrics=metrics) as pool:
            if previous is None or not keep:
                engine = CopyEngine(metrics, store=store)
                referrers = None
            else:
                engine, referrers = previous.engine, previous.referrers
                old = previous.pool.configs
                for name in [n for n, reg in old.items() if config.registries.get(n) != reg]:
                    engine.forget_registry(name)
                    referrers.forget_registry(name)
            if previous is not None:
                pool.adopt(previous.pool)
            syncer = Syncer(
                config,
                pool,
                engine,
                metrics,
                track_target_bytes=track_target_bytes,
                probe_up_to_date=probe_up_to_date,
                referrers=referrers,
            )
            if previous is not None:
                syncer.inherit(previous)
                if keep:
                    # The store is the new Syncer's now: the old one must not close it.
                    previous.owns_store = False
            yield syncer
    finally:
        if syncer.owns_store if syncer is not None else not keep:
            await _close_state(store)
