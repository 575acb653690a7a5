"""Who may work on a unit, a (rule, source repository): the question every pass asks.

A single process owns everything, always (``LocalOwnership``). In a cluster
(``syncd.cluster``) each unit belongs to one live member, and a member that lost its lease
is *fenced*: it starts no copy and writes no tag. The sync layer asks ``select`` once per
pass and ``may_write`` before each copy and right before each manifest PUT, the last step of
a copy, so a fenced replica never leaves a tag it can no longer vouch for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Ownership(Protocol):
    """The ownership a pass consults; implementations must be cheap to call per image."""

    async def select(
        self, rule: str, repositories: Sequence[str], *, complete: bool = True
    ) -> list[str]:
        """The repositories of ``rule`` this process may work on in the pass starting now.

        Called at the start of every pass of ``rule`` (passes of one rule never overlap),
        with every repository the pass would cover, in order; ``complete`` is false for a
        pass limited to some repositories (webhooks). The order is kept.
        """
        ...

    def may_write(self) -> bool:
        """The fence: false as soon as this process can no longer prove its ownership."""
        ...


class LocalOwnership:
    """One process, no cluster: it owns every unit and is never fenced."""

    async def select(
        self, rule: str, repositories: Sequence[str], *, complete: bool = True
    ) -> list[str]:
        return list(repositories)

    def may_write(self) -> bool:
        return True


LOCAL = LocalOwnership()
