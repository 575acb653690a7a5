"""``syncd verify``: check the targets as an auditor would, writing nothing.

Every tag a pass would select (rules, tag filters, platforms) must resolve at every target
to the digest a pass would have put there (the source's; with ``platforms`` the filtered
index's), and every manifest, index child and blob that image references must be present
in the target repository. Each is asked once per target repository (HEAD), however many
tags share it. Only GET and HEAD requests are sent.

Referrers, when the rule copies them (``referrers: true``), are checked where the source
keeps them in tags: cosign's ``sha256-<hex>.sig/.att/.sbom`` tags must be at the target
with the same digest, and every manifest listed in a ``sha256-<hex>`` referrers-tag-schema
index (image-spec 1.1) must be present at the target with its blobs, whatever index the
target keeps (it may merge in entries of its own, or have the referrers API and no tag).
Referrers only the source's referrers API lists, and referrers of referrers, are not
checked. Tags a pass skips as immutable are checked like any other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from syncd.config.schema import Config, RuleConfig
from syncd.copy import CopyEngine
from syncd.endpoint import Endpoint
from syncd.errors import ManifestInvalidError, SyncdError
from syncd.manifest import Manifest
from syncd.referrers import COSIGN_SUFFIXES, fallback_tag, is_referrer_tag
from syncd.registry.pool import ClientPool
from syncd.rules import is_glob, select_repositories, select_tags, target_repository
from syncd.storage import ManifestHead

log = logging.getLogger(__name__)
T = TypeVar("T")

MISSING_TAG = "missing tag"
DIGEST_DIFFERS = "digest differs"
MISSING_MANIFEST = "missing manifest"
MISSING_BLOB = "missing blob"
SIZE_DIFFERS = "blob size differs"
ERROR = "error"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong at a target (or a registry that could not be asked)."""

    rule: str
    kind: str  # one of the constants above
    where: str  # target registry/repository:tag or registry/repository@digest
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.where} ({self.detail})"


@dataclass(slots=True)
class VerifyResult:
    """What ``verify`` found; ``problems`` in the order found."""

    problems: list[Problem] = field(default_factory=list)
    tags: int = 0  # (tag, target) pairs checked
    manifests: int = 0  # manifest HEADs by digest at targets
    blobs: int = 0  # blob HEADs at targets

    @property
    def ok(self) -> bool:
        return not self.problems


class Verifier:
    """Verifies rules against the registries of one pool; remembers every answer it got."""

    def __init__(self, pool: ClientPool) -> None:
        self.pool = pool
        # Source manifests by digest, and platform filtering, as a pass computes them.
        self.engine = CopyEngine()
        self.result = VerifyResult()
        # (registry, repository, digest) -> the size found (blobs) / presence (manifests)
        self._blobs: dict[tuple[str, str, str], asyncio.Task[int | None]] = {}
        self._manifests: dict[tuple[str, str, str], asyncio.Task[bool]] = {}
        self._reported: set[tuple[str, str, str]] = set()

    async def verify(self, rules: Sequence[RuleConfig]) -> VerifyResult:
        for rule in rules:
            await self.verify_rule(rule)
        return self.result

    async def verify_rule(self, rule: RuleConfig) -> None:
        source = self.pool.client(rule.source).with_retries(rule.retries)
        try:
            catalog = await source.catalog() if any(map(is_glob, rule.repositories)) else []
        except SyncdError as e:
            self._problem(rule, ERROR, rule.source, f"listing repositories: {e}")
            return
        gate = asyncio.Semaphore(rule.concurrency)
        for repo in select_repositories(rule.repositories, catalog):
            await self._verify_repository(rule, Endpoint(source, repo), gate)

    async def _verify_repository(
        self, rule: RuleConfig, source: Endpoint, gate: asyncio.Semaphore
    ) -> None:
        repo = source.repository
        try:
            all_tags = await source.client.tags_list(repo, missing_ok=repo not in rule.repositories)
        except SyncdError as e:
            self._problem(rule, ERROR, str(source), f"listing tags: {e}")
            return
        # The same selection as a pass (sync.Syncer._jobs): referrer tags travel with their
        # subject, not as images of their own.
        carried = rule.referrers or rule.require_signature
        listed = [t for t in all_tags if not (carried and is_referrer_tag(t))]
        present = set(all_tags)
        for missing in (t for t in rule.tags.names if t not in present):
            self._problem(rule, ERROR, f"{source}:{missing}", "not at the source")

        async def one(tag: str) -> None:
            async with gate:
                await self._verify_tag(rule, source, tag, present)

        async with asyncio.TaskGroup() as tg:
            for tag in select_tags(listed, rule.tags):
                tg.create_task(one(tag))

    # -- one tag ---------------------------------------------------------------------------
    async def _verify_tag(
        self, rule: RuleConfig, source: Endpoint, tag: str, source_tags: set[str]
    ) -> None:
        targets = [
            Endpoint(
                self.pool.client(name).with_retries(rule.retries),
                target_repository(rule, source.repository),
            )
            for name in rule.targets
        ]
        # The targets' tag HEADs go out alongside the source's reads, not after them: a tag
        # in place then costs one round trip, as in a pass (CopyEngine.look_ahead).
        heads = [asyncio.ensure_future(t.client.manifest_head(t.repository, tag)) for t in targets]
        try:
            await self._verify_tag_at(rule, source, tag, source_tags, targets, heads)
        finally:
            for head in heads:
                head.cancel()
            await asyncio.gather(*heads, return_exceptions=True)

    async def _verify_tag_at(
        self,
        rule: RuleConfig,
        source: Endpoint,
        tag: str,
        source_tags: set[str],
        targets: Sequence[Endpoint],
        heads: Sequence[asyncio.Future[ManifestHead | None]],
    ) -> None:
        try:
            info = await source.client.manifest_head(source.repository, tag)
            if info is None:
                self._problem(rule, ERROR, f"{source}:{tag}", "gone from the source")
                return
            try:
                want = await self.engine.platforms.desired(source, info.digest, rule.platforms)
            except ManifestInvalidError as e:
                # Not of a selected platform: a pass fails it; there is nothing to expect.
                self._problem(rule, ERROR, f"{source}:{tag}", str(e))
                return
            tree = await self._tree(source, want)
        except SyncdError as e:
            self._problem(rule, ERROR, f"{source}:{tag}", f"reading the source: {e}")
            return
        # A filtered index is a new digest: only its children's referrers travel.
        subjects = [c.digest for c in want.children]
        if want.digest == info.digest:
            subjects.insert(0, want.digest)
        try:
            referrers = await self._referrers(rule, source, subjects, source_tags)
        except SyncdError as e:
            self._problem(rule, ERROR, f"{source}:{tag}", f"reading its referrers: {e}")
            referrers = Verifier._Referrers()
        for target, head in zip(targets, heads, strict=True):
            await self._at_target(rule, target, tag, want, tree, f"{source}:{tag}", head)
            for ref_tag, ref_tree in referrers.tagged:
                ref_source = f"{source}:{ref_tag}"
                await self._at_target(rule, target, ref_tag, ref_tree[0], ref_tree, ref_source)
            for ref_tree in referrers.listed:
                await self._tree_at(rule, target, ref_tree, f"referrer of {target}:{tag}")

    async def _at_target(
        self,
        rule: RuleConfig,
        target: Endpoint,
        tag: str,
        want: Manifest,
        tree: list[Manifest],
        source: str,
        looked: Awaitable[ManifestHead | None] | None = None,
    ) -> None:
        where = f"{target}:{tag}"
        self.result.tags += 1
        try:
            head = await (looked or target.client.manifest_head(target.repository, tag))
        except SyncdError as e:
            self._problem(rule, ERROR, where, str(e))
            return
        if head is None:
            self._problem(rule, MISSING_TAG, where, f"{source} is {want.digest}")
        elif head.digest != want.digest:
            self._problem(
                rule, DIGEST_DIFFERS, where, f"target has {head.digest}, expected {want.digest}"
            )
        else:
            await self._tree_at(rule, target, tree, where, top_known=True)

    async def _tree_at(
        self,
        rule: RuleConfig,
        target: Endpoint,
        tree: list[Manifest],
        label: str,
        *,
        top_known: bool = False,
    ) -> None:
        """Every manifest of ``tree`` (the top one first) and its blobs present at ``target``."""
        name, repo = target.client.name, target.repository
        for i, m in enumerate(tree):
            if not (i == 0 and top_known):
                try:
                    present = await self._once(
                        self._manifests, target, m.digest, self._has_manifest
                    )
                except SyncdError as e:
                    self._problem(rule, ERROR, f"{target}@{m.digest}", str(e))
                    continue
                if not present:
                    self._report(rule, MISSING_MANIFEST, (name, repo, m.digest), label)
                    continue
            for b in m.blobs:
                try:
                    size = await self._once(self._blobs, target, b.digest, self._blob_size)
                except SyncdError as e:
                    self._problem(rule, ERROR, f"{target}@{b.digest}", str(e))
                    continue
                if size is None:
                    self._report(rule, MISSING_BLOB, (name, repo, b.digest), f"in {label}")
                elif size != b.size:
                    detail = f"in {label}: {size} bytes, expected {b.size}"
                    self._report(rule, SIZE_DIFFERS, (name, repo, b.digest), detail)

    # -- referrers kept in tags --------------------------------------------------------------
    @dataclass(slots=True)
    class _Referrers:
        tagged: list[tuple[str, list[Manifest]]] = field(default_factory=list)  # cosign tags
        listed: list[list[Manifest]] = field(default_factory=list)  # tag-schema entries

    async def _referrers(
        self, rule: RuleConfig, source: Endpoint, subjects: list[str], source_tags: set[str]
    ) -> Verifier._Referrers:
        found = Verifier._Referrers()
        if not rule.referrers:
            return found
        types = set(rule.referrers_types)
        for subject in subjects:
            base = fallback_tag(subject)
            for suffix, artifact_type in COSIGN_SUFFIXES:
                tag = f"{base}.{suffix}"
                if tag in source_tags and (not types or artifact_type in types):
                    info = await self._source_head(source, tag)
                    if info is not None:
                        m = await self.engine.manifest(source, info)
                        found.tagged.append((tag, await self._tree(source, m)))
            if base not in source_tags:
                continue
            info = await self._source_head(source, base)
            if info is None:
                continue
            index = await self.engine.manifest(source, info)
            for entry in index.children:
                m = await self.engine.manifest(source, entry.digest)
                kind = entry.artifact_type or m.artifact_type
                kind = kind or (m.config.media_type if m.config else "")
                if not types or kind in types:
                    found.listed.append(await self._tree(source, m))
        return found

    async def _source_head(self, source: Endpoint, tag: str) -> str | None:
        info = await source.client.manifest_head(source.repository, tag)
        return info.digest if info else None

    # -- requests, each made once ------------------------------------------------------------
    async def _tree(self, source: Endpoint, m: Manifest) -> list[Manifest]:
        """``m`` and, for an index, its children (one level: what an index may hold)."""
        return [m, *(await self.engine.children(source, m) if m.is_index else [])]

    async def _has_manifest(self, target: Endpoint, digest: str) -> bool:
        self.result.manifests += 1
        return await target.client.manifest_head(target.repository, digest) is not None

    async def _blob_size(self, target: Endpoint, digest: str) -> int | None:
        self.result.blobs += 1
        return await target.client.blob_head(target.repository, digest)

    async def _once(
        self,
        cache: dict[tuple[str, str, str], asyncio.Task[T]],
        target: Endpoint,
        digest: str,
        ask: Callable[[Endpoint, str], Awaitable[T]],
    ) -> T:
        key = (target.client.name, target.repository, digest)
        task = cache.get(key)
        if task is None:
            task = cache[key] = asyncio.ensure_future(ask(target, digest))
        return await asyncio.shield(task)

    # -- problems -------------------------------------------------------------------------------
    def _report(self, rule: RuleConfig, kind: str, key: tuple[str, str, str], detail: str) -> None:
        """A missing manifest or blob, once per target repository however many tags use it."""
        if key in self._reported:
            return
        self._reported.add(key)
        self._problem(rule, kind, f"{key[0]}/{key[1]}@{key[2]}", detail)

    def _problem(self, rule: RuleConfig, kind: str, where: str, detail: str) -> None:
        problem = Problem(rule.name, kind, where, detail)
        log.debug("%s", problem, extra={"rule": rule.name, "event": "verify_problem"})
        self.result.problems.append(problem)


async def verify_config(config: Config, rules: Sequence[RuleConfig]) -> VerifyResult:
    """Open a session per registry, verify ``rules``, close the sessions."""
    async with ClientPool(config.registries) as pool:
        return await Verifier(pool).verify(rules)
