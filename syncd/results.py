"""What a pass reports: per rule (``RulePassResult``) and, for ``plan``, per image.

Kept apart from ``syncd.sync`` so the modules that contribute to a pass (``syncd.prune``)
fill the same values without importing the pass itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from syncd.manifest import Descriptor


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
    # | delete | keep (a deletion prune will not make) | delete_held (over max_deletions)
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
    # Tags deleted by ``prune``, in all and per target registry name.
    deleted: int = 0
    deleted_by_target: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    # What a person should hear about that is not a failed image (deletions held back,
    # a registry refusing deletes), one line each.
    notes: list[str] = field(default_factory=list)
    plan: list[PlanEntry] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def add(self, other: RulePassResult) -> None:
        self.synced += other.synced
        self.skipped += other.skipped
        self.failed += other.failed
        self.blobs_copied += other.blobs_copied
        self.blobs_mounted += other.blobs_mounted
        self.blobs_skipped += other.blobs_skipped
        self.bytes_copied += other.bytes_copied
        self.referrers_copied += other.referrers_copied
        self.deleted += other.deleted
        for target, n in other.deleted_by_target.items():
            self.deleted_by_target[target] = self.deleted_by_target.get(target, 0) + n
        self.failures.extend(other.failures)
        self.notes.extend(other.notes)
        self.plan.extend(other.plan)
