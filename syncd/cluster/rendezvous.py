"""Rendezvous (highest random weight) hashing: which member owns a unit.

Every member scores every (member, unit) pair with a hash and the highest score wins
(Thaler and Ravishankar, "Using name-based mappings to increase hit rates", 1998). All
replicas compute the same owner from the same member set with no coordination, and when a
member joins or leaves only the units it wins or held move: about 1/N of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence


def unit_key(rule: str, repository: str) -> str:
    """The name of a unit; NUL cannot occur in a rule name or a repository path."""
    return f"{rule}\x00{repository}"


def _score(member: str, unit: str) -> int:
    # sha256 rather than Python's hash(): the score must be the same in every process.
    digest = hashlib.sha256(f"{member}\x00{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def owner(unit: str, members: Iterable[str]) -> str | None:
    """The member that owns ``unit``; None when there is no member.

    Ties (astronomically unlikely with 64-bit scores) go to the lower name, so the answer
    never depends on the order of ``members``.
    """
    best: tuple[int, str] | None = None
    for m in members:
        s = _score(m, unit)
        if best is None or s > best[0] or (s == best[0] and m < best[1]):
            best = (s, m)
    return best[1] if best else None


def assign(units: Iterable[str], members: Sequence[str]) -> dict[str, list[str]]:
    """Every member's units (members with none map to an empty list)."""
    out: dict[str, list[str]] = {m: [] for m in members}
    for u in units:
        o = owner(u, members)
        if o is not None:
            out[o].append(u)
    return out
