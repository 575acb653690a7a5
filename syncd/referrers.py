"""Referrers: the signatures, SBOMs and attestations that refer to an image travel with it.

Three places say what refers to a digest at the source, tried in this order:

1. the OCI 1.1 referrers API (``GET /v2/<name>/referrers/<digest>``), where the registry
   has it;
2. without the API, the referrers tag schema of image-spec 1.1: a tag ``sha256-<hex>``
   holding an index of the referrers' descriptors (what OCI 1.1 clients such as oras,
   notation and cosign maintain against registries without the API);
3. cosign's legacy tags ``sha256-<hex>.sig``, ``.att`` and ``.sbom`` (always looked at).

Whether a registry has the API is asked once per registry and remembered. For a registry
without it, the fallback and cosign tags are found in the repository's tag list, which a
pass fetches anyway, so an image nothing refers to costs no request at all.

Referrers are copied after the image, by digest (cosign's by their tag), with their digests
unchanged, recursively up to ``MAX_DEPTH`` (a signature of an SBOM of the image). At a
target without the API the ``sha256-<hex>`` index is kept up to date there: descriptors are
merged in, none twice, entries already there are kept. At a target with the API, pushing
the manifest, which carries ``subject``, is all it takes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from syncd.config.schema import RuleConfig
from syncd.copy import CopyEngine
from syncd.copy_result import ImageResult, TargetSpec
from syncd.endpoint import Endpoint
from syncd.errors import NotFoundError, SyncdError, UnsignedImageError
from syncd.manifest import INDEX_TYPES, OCI_INDEX, Manifest, parse_manifest
from syncd.referrers_tags import (
    COSIGN_SUFFIXES,
    MAX_DEPTH,
    Carried,
    Referrer,
    fallback_tag,
    is_referrer_tag,
    is_signature_type,
    merge_fallback_index,
)
from syncd.singleflight import SingleFlight
from syncd.storage import ManifestHead

if TYPE_CHECKING:
    from syncd.metrics import Metrics

__all__ = [  # with what referrers_tags holds, still imported from here
    "COSIGN_SUFFIXES",
    "MAX_DEPTH",
    "Carried",
    "Referrer",
    "ReferrerSync",
    "SourceReferrers",
    "fallback_tag",
    "is_referrer_tag",
    "is_signature_type",
    "merge_fallback_index",
]

log = logging.getLogger(__name__)


class ReferrerSync:
    """Carries referrers for one ``Syncer``; remembers which registries have the API."""

    def __init__(
        self, engine: CopyEngine, metrics: Metrics | None = None, *, probe_up_to_date: bool = True
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        # Whether an image found up to date may make the registry's API probe. A one-shot
        # pass says no: with nothing to copy it then makes exactly one HEAD per tag per
        # registry (the no-op budget, docs/benchmarks.md "Floors of the no-op passes");
        # referrer tags are still found in the tag list.
        # A daemon says yes: one request per process, and it then also finds referrers
        # attached through the API to images it copied on earlier passes.
        self.probe_up_to_date = probe_up_to_date
        # registry name -> whether it answers the referrers API
        self._api: dict[str, bool] = {}
        # registry names the state store had no answer for, when first asked
        self._not_stored: set[str] = set()
        self._probe = asyncio.Lock()
        # (source repository, digest): two tags of one image in a pass carry its referrers
        # one after the other, so the second finds them there.
        self.carrying: SingleFlight[tuple[str, str], None] = SingleFlight()

    def forget_registry(self, name: str) -> None:
        """Ask registry ``name`` about the referrers API again (a reload changed it)."""
        self._api.pop(name, None)
        self._not_stored.discard(name)

    def for_job(self, rule: RuleConfig, source: Endpoint, tags: Collection[str]) -> SourceReferrers:
        """A view of one source repository for one job (one tag), with its own memo."""
        return SourceReferrers(self, rule, source, tags)

    def known_api(self, endpoint: Endpoint) -> bool | None:
        """Whether the registry has the referrers API, if known (asked, or in the store)."""
        name = endpoint.client.name
        if name not in self._api and name not in self._not_stored:
            stored = self.engine.facts.api_known(endpoint)
            if stored is None:
                # Not asked again on every tag: the answer comes from this process's probe.
                self._not_stored.add(name)
            else:
                self._api[name] = stored
        return self._api.get(name)

    async def has_api(self, endpoint: Endpoint, digest: str) -> tuple[bool, Manifest | None]:
        """Whether the registry has the referrers API, asked once per registry.

        The first question is a real one (the referrers of ``digest``, which must exist in
        the repository: a registry with the API may answer 404 for an unknown repository),
        and its answer is returned so the caller need not ask again.
        """
        name = endpoint.client.name
        known = self.known_api(endpoint)
        if known is not None:
            return known, None
        async with self._probe:
            known = self._api.get(name)
            if known is not None:
                return known, None
            try:
                index = await endpoint.client.referrers(endpoint.repository, digest)
            except SyncdError as e:
                # The probe is a question, not work the image needs: no image fails because
                # of it. A refusal (4xx) is as good as "no API"; a transient failure (5xx,
                # network) answers "no" for this image only and is asked again later.
                log.warning(
                    "%s: referrers API probe failed (%s); using the tag schemes",
                    name,
                    e,
                    extra={"registry": name, "event": "referrers_api_probe_failed"},
                )
                if not e.retryable:
                    self._api[name] = False
                return False, None
            self._api[name] = index is not None
            self.engine.facts.api_learnt(endpoint, index is not None)
            log.info(
                "%s %s",
                name,
                "has the OCI referrers API"
                if index is not None
                else "has no OCI referrers API: using the sha256-<hex> and cosign tags",
                extra={"registry": name, "event": "referrers_api", "api": index is not None},
            )
            return index is not None, index


class SourceReferrers:
    """What refers to what in one source repository, each question asked at most once."""

    def __init__(
        self, sync: ReferrerSync, rule: RuleConfig, source: Endpoint, tags: Collection[str]
    ) -> None:
        self.sync = sync
        self.rule = rule
        self.source = source
        # Only the referrer-shaped tags matter here; the caller passes those (or all).
        self.tags = frozenset(t for t in tags if is_referrer_tag(t))
        self._levels: dict[str, tuple[list[Referrer], Manifest | None]] = {}
        # The answer of the once-per-registry API probe, when this job made it.
        self._probed: dict[str, Manifest] = {}
        self._resolve_error: SyncdError | None = None
        # False while carrying for an image found up to date by a one-shot pass: the API is
        # then used only if this process already knows the registry has it.
        self._may_probe = True

    @property
    def active(self) -> bool:
        """Whether this rule looks at referrers at all (to copy them, or for the gate)."""
        return self.rule.referrers or self.rule.require_signature

    async def resolve(self, reference: str) -> ManifestHead | None:
        """The source's HEAD of ``reference``, or None if absent or failed.

        Without a gate the copy then reports the problem itself; with one, ``unsigned``
        reports it, so an image whose signature could not be checked is never copied.
        """
        try:
            info = await self.source.client.manifest_head(self.source.repository, reference)
        except SyncdError as e:
            self._resolve_error = e
            return None
        if info is None:
            self._resolve_error = NotFoundError(
                f"{reference} not found",
                registry=self.source.client.name,
                repository=self.source.repository,
            )
        return info

    # -- discovery -----------------------------------------------------------------------
    async def level(self, subject: str, depth: int = 1) -> tuple[list[Referrer], Manifest | None]:
        """The direct referrers of ``subject`` and the source's fallback index, if any.

        Unfiltered, except that with exactly one ``referrers_types`` entry (and no gate) an
        API server is asked for that type only.
        """
        memo = self._levels.get(subject)
        if memo is not None:
            return memo
        src = self.source
        api = await self._source_api(subject)
        fallback: Manifest | None = None
        if api:
            index = self._probed.pop(subject, None)
            if index is None:
                # One type asked for: let the server filter (the client re-checks).
                only = self.rule.referrers_types
                wanted = only[0] if len(only) == 1 and not self.rule.require_signature else None
                index = await src.client.referrers(src.repository, subject, wanted)
        else:
            index = None
            tag = fallback_tag(subject)
            if tag in self.tags:
                info = await src.client.manifest_head(src.repository, tag)
                if info is not None and info.media_type in INDEX_TYPES | {""}:
                    fallback = index = await self.sync.engine.manifest(src, info.digest)
        found: list[Referrer] = []
        if index is not None:
            raw_entries = json.loads(index.raw).get("manifests") or []
            for desc, entry in zip(index.children, raw_entries, strict=False):
                if desc.digest == subject:
                    continue
                artifact_type = desc.artifact_type
                if not artifact_type and not await self._exists(desc.digest):
                    continue
                if not artifact_type:
                    # Listed without its type: the manifest says (the copy fetches it anyway).
                    artifact_type = (
                        await self.sync.engine.manifest(src, desc.digest)
                    ).artifact_type
                found.append(
                    Referrer(
                        subject,
                        desc.digest,
                        desc.media_type,
                        desc.size,
                        artifact_type,
                        depth,
                        entry=entry if isinstance(entry, dict) else {},
                    )
                )
        for suffix, artifact_type in COSIGN_SUFFIXES:
            tag = f"{fallback_tag(subject)}.{suffix}"
            if tag not in self.tags:
                continue
            info = await src.client.manifest_head(src.repository, tag)
            if info is not None:
                found.append(
                    Referrer(
                        subject,
                        info.digest,
                        info.media_type,
                        info.size,
                        artifact_type,
                        depth,
                        tag=tag,
                    )
                )
        self._levels[subject] = (found, fallback)
        return found, fallback

    async def _exists(self, digest: str) -> bool:
        """Whether the source has ``digest``; a listed referrer it lacks is skipped, not fatal.

        (A signature deleted while its index entry stayed would otherwise fail its image on
        every pass.)
        """
        try:
            await self.sync.engine.manifest(self.source, digest)
        except NotFoundError:
            self._dangling(digest)
            return False
        return True

    def _dangling(self, digest: str) -> None:
        log.warning(
            "%s lists %s as a referrer but does not have it; skipped",
            self.source,
            digest,
            extra={"event": "referrer_dangling", "source": str(self.source), "digest": digest},
        )

    async def _source_api(self, digest: str) -> bool:
        if not self._may_probe:
            return self.sync.known_api(self.source) is True
        api, index = await self.sync.has_api(self.source, digest)
        if index is not None:
            self._probed[digest] = index
        return api

    def _wanted(self, r: Referrer) -> bool:
        types = self.rule.referrers_types
        return not types or r.artifact_type in types

    async def tree(self, subjects: Sequence[str]) -> tuple[list[Referrer], dict[str, Manifest]]:
        """Every wanted referrer of ``subjects``, parents before their own referrers."""
        out: list[Referrer] = []
        taken: set[tuple[str, str]] = set()
        indexes: dict[str, Manifest] = {}
        seen = set(subjects)
        frontier = list(subjects)
        for depth in range(1, MAX_DEPTH + 1):
            following: list[str] = []
            for subject in frontier:
                found, fallback = await self.level(subject, depth)
                if fallback is not None:
                    indexes[subject] = fallback
                for r in found:
                    if not self._wanted(r) or (r.digest, r.tag) in taken:
                        continue
                    taken.add((r.digest, r.tag))
                    out.append(r)
                    if r.digest not in seen:
                        seen.add(r.digest)
                        following.append(r.digest)
            frontier = following
            if not frontier:
                break
        return out, indexes

    async def unsigned(self, reference: str, head: ManifestHead | None) -> SyncdError | None:
        """None if a signature refers to the image at the source, else the error to report.

        ``head`` is ``resolve``'s answer; None (not found, or the HEAD failed) fails the gate
        with that error: what cannot be checked is not promoted.
        """
        if head is None:
            return self._resolve_error or NotFoundError(
                f"{reference} not found",
                registry=self.source.client.name,
                repository=self.source.repository,
            )
        digest = head.digest
        if f"{fallback_tag(digest)}.sig" in self.tags:
            return None
        try:
            found, _ = await self.level(digest)
        except SyncdError as e:
            return e
        if any(is_signature_type(r.artifact_type) for r in found):
            return None
        return UnsignedImageError(
            f"{self.source}:{reference} ({digest}): no signature refers to it at the source"
            " (require_signature)"
        )

    async def subjects(self, head: ManifestHead, image: ImageResult) -> list[str]:
        """The digests whose referrers go with this image: it and its index's children."""
        if not await self._source_api(head.digest) and not self.tags:
            return []  # no API and no referrer tag in the repository: nothing to find
        out: list[str] = []
        # A platform-filtered index is a new digest at the target: its source referrers
        # would refer to nothing there, so only the (unchanged) children's go.
        if image.digest == head.digest:
            out.append(head.digest)
        if head.media_type in INDEX_TYPES or image.digest != head.digest:
            m = image.manifest or await self.sync.engine.platforms.desired(
                self.source, head.digest, self.rule.platforms
            )
            out.extend(c.digest for c in m.children)
        return out

    # -- copying -------------------------------------------------------------------------
    async def carry(
        self,
        head: ManifestHead,
        image: ImageResult,
        specs: Sequence[TargetSpec],
        *,
        dry_run: bool = False,
    ) -> Carried:
        """Copy every wanted referrer of the image to the targets the image is good at.

        A failure marks the image failed at that target (its outcome), so the pass reports
        it and the next pass, finding the image up to date, tries the referrers again.
        """
        if not self.tags and self.sync.known_api(self.source) is False:
            # Nothing can refer to it here (no API, no referrer tag in the repository): the
            # answer of ``subjects`` without the turn, for nearly every tag of a steady pass.
            return Carried()
        async with self.sync.carrying.turn((str(self.source), head.digest)):
            return await self._carry(head, image, specs, dry_run)

    async def _carry(
        self, head: ManifestHead, image: ImageResult, specs: Sequence[TargetSpec], dry_run: bool
    ) -> Carried:
        carried = Carried()
        live = [
            spec.endpoint
            for spec, o in zip(specs, image.outcomes, strict=True)
            if o.action != "failed"
        ]
        if not live:
            return carried
        if not self.sync.probe_up_to_date:
            self._may_probe = any(o.action in ("copied", "copy") for o in image.outcomes)
        try:
            subjects = await self.subjects(head, image)
            referrers, indexes = await self.tree(subjects) if subjects else ([], {})
        except SyncdError as e:
            for t in live:
                carried.errors[str(t)] = e
            self._mark(image, carried)
            return carried
        if not referrers:
            return carried
        present: dict[str, set[str]] = {str(t): set() for t in live}
        same: dict[str, set[str]] = {str(t): set() for t in live}
        api: dict[str, bool] = {}
        if not dry_run:
            for t in list(live):
                try:
                    api[str(t)], _ = await self.sync.has_api(t, image.digest)
                    if not api[str(t)]:
                        same[str(t)] = await self._same_index(t, indexes, present[str(t)])
                except SyncdError as e:
                    carried.errors[str(t)] = e
                    live.remove(t)
        for r in referrers:
            need = [t for t in live if r.digest not in present[str(t)] or r.tag]
            if not need:
                continue
            result = await self.sync.engine.copy_image(
                self.source,
                r.reference,
                [TargetSpec(t, r.tag or None) for t in need],
                source_digest=r.digest,
                dry_run=dry_run,
                artifact=True,
            )
            if result.error is not None:
                for t in need:
                    carried.errors.setdefault(str(t), result.error)
                continue
            if self._missing_at_source(result) and not await self._at_source(r):
                self._dangling(r.digest)
                continue
            for t, o in zip(need, result.outcomes, strict=True):
                if o.action == "failed":
                    assert o.error is not None
                    carried.errors.setdefault(str(t), o.error)
                    continue
                present[str(t)].add(r.digest)
                if o.action == "copy":
                    carried.planned.append((r, str(t)))
                elif o.action == "copied":
                    carried.copied += 1
                    if self.sync.metrics:
                        self.sync.metrics.referrers_copied.labels(target=t.client.name).inc()
                    log.info(
                        "copied referrer %s (%s) of %s to %s",
                        r.reference,
                        r.artifact_type or r.media_type,
                        r.subject,
                        t,
                        extra={
                            "event": "referrer_copy",
                            "rule": self.rule.name,
                            "source": str(self.source),
                            "target": str(t),
                            "digest": r.digest,
                            "subject": r.subject,
                            "artifact_type": r.artifact_type,
                        },
                    )
        if not dry_run:
            for t in live:
                if api.get(str(t)):
                    continue  # the target lists referrers itself, from their subject field
                try:
                    await self._update_index(t, referrers, indexes, present[str(t)], same[str(t)])
                except SyncdError as e:
                    carried.errors.setdefault(str(t), e)
        self._mark(image, carried)
        return carried

    async def _same_index(
        self, t: Endpoint, indexes: dict[str, Manifest], present: set[str]
    ) -> set[str]:
        """Where the target's fallback index is the source's, its entries are there already.

        (The registry refuses an index whose entries it lacks.) One HEAD per subject then
        replaces one HEAD per referrer: what makes a pass over unchanged images cheap.
        """
        same: set[str] = set()
        for subject, index in indexes.items():
            info = await t.client.manifest_head(t.repository, fallback_tag(subject))
            if info is not None and info.digest == index.digest:
                present.update(c.digest for c in index.children)
                same.add(subject)
        return same

    async def _update_index(
        self,
        t: Endpoint,
        referrers: Sequence[Referrer],
        indexes: dict[str, Manifest],
        present: set[str],
        same: set[str],
    ) -> None:
        """Merge the referrers present at ``t`` into its ``sha256-<hex>`` index per subject.

        ``same``: subjects whose index at ``t`` is already the source's (nothing to do).
        """
        by_subject: dict[str, list[dict[str, Any]]] = {}
        for r in referrers:
            if r.tag or r.digest not in present:
                continue
            entry = r.entry or _entry(r)
            by_subject.setdefault(r.subject, []).append(entry)
        for subject, entries in by_subject.items():
            if subject in same:
                continue
            tag = fallback_tag(subject)
            source_index = indexes.get(subject)
            info = await t.client.manifest_head(t.repository, tag)
            if source_index is not None and info is not None and info.digest == source_index.digest:
                continue
            existing = await self.sync.engine.manifest(t, info.digest) if info else None
            if existing is not None and not existing.is_index:
                log.warning(
                    "%s:%s is not an index; not maintaining referrers there",
                    t,
                    tag,
                    extra={"event": "referrers_index", "target": str(t)},
                )
                continue
            raw = merge_fallback_index(existing, source_index, entries)
            if raw is None:
                continue
            m = parse_manifest(raw, OCI_INDEX, where=f"{t}:{tag}")
            # Two jobs of one digest may merge at once; both add the same entries, so the
            # later PUT loses nothing the earlier one wrote.
            await self.sync.engine.put_manifest(t, tag, m)
            log.info(
                "updated referrers index %s:%s (%d entries)",
                t,
                tag,
                len(m.children),
                extra={"event": "referrers_index", "target": str(t), "subject": subject},
            )

    def _missing_at_source(self, result: ImageResult) -> bool:
        """Every target failed on something the source lacks (the referrer, or a blob)."""
        return bool(result.outcomes) and all(
            isinstance(o.error, NotFoundError) and o.error.registry == self.source.client.name
            for o in result.outcomes
        )

    async def _at_source(self, r: Referrer) -> bool:
        """Whether the source has the referrer's manifest: without it the entry is dangling
        (skipped); with it, a blob is missing, a broken artifact that fails the image."""
        try:
            return (
                await self.source.client.manifest_head(self.source.repository, r.digest) is not None
            )
        except SyncdError:
            return True

    def _mark(self, image: ImageResult, carried: Carried) -> None:
        """Fail the image at each target where its referrers did not all arrive."""
        for o in image.outcomes:
            err = carried.errors.get(f"{o.target}/{o.repository}")
            if err is not None and o.action != "failed":
                log.error(
                    "referrers of %s@%s did not all reach %s/%s: %s",
                    self.source,
                    image.digest,
                    o.target,
                    o.repository,
                    err,
                    extra={
                        "event": "referrer_copy",
                        "rule": self.rule.name,
                        "source": str(self.source),
                        "target": f"{o.target}/{o.repository}",
                        "digest": image.digest,
                        "result": "failed",
                    },
                )
                o.action, o.error = "failed", err


def _entry(r: Referrer) -> dict[str, Any]:
    entry: dict[str, Any] = {"mediaType": r.media_type, "digest": r.digest, "size": r.size}
    if r.artifact_type:
        entry["artifactType"] = r.artifact_type
    return entry
