"""What a pass reports per rule (``RulePassResult``).

Kept apart from ``syncd.sync`` so the modules that contribute to a pass (``syncd.prune``,
``syncd.plan``, ``syncd.report``) fill and read the same value without importing the pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from syncd.plan import PlanEntry
from syncd.report import ImageFailure, TargetCounts


@dataclass(slots=True)
class RulePassResult:
    """The outcome of one pass of one rule (images counted once each; ``targets`` per target)."""

    rule: str
    synced: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    started: float = 0.0  # wall-clock (time.time()) start and end, for the run report
    finished: float = 0.0
    blobs_copied: int = 0
    blobs_mounted: int = 0
    blobs_skipped: int = 0
    bytes_copied: int = 0
    referrers_copied: int = 0
    fenced: int = 0  # images not started because this replica lost its cluster lease
    failures: list[str] = field(default_factory=list)
    plan: list[PlanEntry] = field(default_factory=list)
    targets: dict[str, TargetCounts] = field(default_factory=dict)
    images_failed: list[ImageFailure] = field(default_factory=list)
    # Tags deleted by ``prune``, in all and per target registry name.
    deleted: int = 0
    deleted_by_target: dict[str, int] = field(default_factory=dict)
    # What a person should hear about that is not a failed image (deletions held back,
    # a registry refusing deletes), one line each.
    notes: list[str] = field(default_factory=list)

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
        self.fenced += other.fenced
        self.failures.extend(other.failures)
        self.notes.extend(other.notes)
        self.plan.extend(other.plan)
        for name, counts in other.targets.items():
            self.at(name).add(counts)
        self.images_failed.extend(other.images_failed)
        self.deleted += other.deleted
        for name, n in other.deleted_by_target.items():
            self.deleted_by_target[name] = self.deleted_by_target.get(name, 0) + n

    def at(self, target: str) -> TargetCounts:
        """The per-target counts of ``target`` (created at zero)."""
        counts = self.targets.get(target)
        if counts is None:
            counts = self.targets[target] = TargetCounts()
        return counts
