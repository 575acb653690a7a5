"""The state store: what syncd knows about target registries between passes and processes.

Everything here is a cache of facts about registries (which digest syncd pushed or
confirmed at a tag, where a blob lives, which image a repository held), plus the last
report of every rule. Nothing in it is trusted where being wrong would do harm: a deletion
is always preceded by a HEAD of the tag (``syncd.prune``), a mount that the registry
declines falls back to an upload, and a trusted tag is trusted only inside the
``target_recheck`` window the operator chose. So a lost, stale or wrong store costs
requests, never a wrong deletion or a failed image.

Facts are keyed by the registry's normalised address (``registry_key``) and repository, not
by the name a config gives the registry, so configs sharing one store file agree on facts
and do not mix them. ``StateStore`` is the protocol every backend implements (SQLite in
``syncd.state_sqlite``, ``MemoryStore`` here for ``state: {path: none}``); it is
synchronous, each call short, and a backend that fails a write logs it and goes on.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}
# Bounds of the in-memory store: a daemon without a state file must not grow without end.
MAX_TAGS = 200_000
MAX_BLOBS = 200_000
MAX_IMAGES = 50_000


@functools.lru_cache(maxsize=256)
def registry_key(url: str) -> str:
    """The address a registry's facts are filed under: ``host[:port]``, lower-case, the
    scheme's default port dropped (``https://Reg.example:443/`` → ``reg.example``).

    The scheme is not part of it: one host and port is one registry whichever way it is
    reached. Addresses that are not URLs (``oci:/srv/mirror``) are kept as they are.
    """
    text = url.strip()
    if "://" not in text:
        if ":" in text and not text.split(":", 1)[1].split("/")[0].isdigit():
            return text  # oci:/path, oci-archive:/file.tar
        text = "https://" + text
    parts = urlsplit(text)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"  # IPv6
    port = parts.port
    if port is not None and port != _DEFAULT_PORTS.get(parts.scheme.lower()):
        return f"{host}:{port}"
    return host


@dataclass(frozen=True, slots=True)
class TagRecord:
    """What syncd knows of one tag it pushed or confirmed at a target repository."""

    digest: str
    at: float  # when pushed or confirmed (Unix time)
    trusted_until: float = 0.0  # ``target_recheck``: no HEAD needed before this (Unix time)


class StateStore(Protocol):
    """Facts about target registries, and the last report of every rule.

    ``registry`` arguments are ``registry_key`` values. Reads may miss what another
    process wrote a moment ago, and writes may be buffered until ``flush``: the store is a
    cache, and every decision taken from it is checked against the registry first.
    """

    # -- tags syncd pushed or confirmed, per rule (what ``prune`` may delete) ------------
    def tag_get(self, rule: str, registry: str, repository: str, tag: str) -> TagRecord | None:
        """The record of ``tag``, if syncd pushed or confirmed it for ``rule``."""
        ...

    def tag_list(self, rule: str, registry: str, repository: str) -> dict[str, TagRecord]:
        """Every tag of ``repository`` that ``rule`` pushed or confirmed there."""
        ...

    def tag_put(
        self,
        rule: str,
        registry: str,
        repository: str,
        tag: str,
        digest: str,
        *,
        at: float,
        trusted_until: float = 0.0,
    ) -> None:
        """``tag`` held ``digest`` at ``at`` (syncd pushed it, or found it so)."""
        ...

    def tag_distrust(self, rule: str, registry: str, repository: str, tag: str) -> None:
        """The tag no longer matches what syncd knew: ask the registry next time."""
        ...

    def tag_delete(self, rule: str, registry: str, repository: str, tag: str) -> None:
        """Forget the tag (syncd deleted it, or it is gone, or someone else owns it now)."""
        ...

    # -- where blobs live in a target registry ------------------------------------------
    def blob_where(self, registry: str, digest: str) -> str | None:
        """A repository of ``registry`` known to hold ``digest``."""
        ...

    def blob_put(self, registry: str, digest: str, repository: str) -> None: ...

    def blob_delete(self, registry: str, digest: str) -> None: ...

    def repository_forget(self, registry: str, repository: str) -> None:
        """Stop trusting the blob locations of ``repository`` (a push there failed)."""
        ...

    # -- images found complete in a target repository (where to look for blobs) ---------
    def image_put(
        self, registry: str, repository: str, digest: str, *, noted: bool = False
    ) -> None:
        """``repository`` holds the complete image ``digest``; ``noted``: the locations
        of its blobs are recorded (syncd pushed them, or read the image for them)."""
        ...

    def image_list(self, registry: str, limit: int) -> list[tuple[str, str]]:
        """Up to ``limit`` (repository, digest) pairs of ``registry`` whose blobs are not
        noted yet, newest first."""
        ...

    # -- content-addressed: the blobs (digest -> size) an image or index references -------
    def sizes_get(self, digest: str) -> dict[str, int] | None:
        """The blobs of the image (for an index: of all its children) named ``digest``."""
        ...

    def sizes_put(self, digest: str, sizes: dict[str, int]) -> None: ...

    # -- other facts about a registry (e.g. whether it has the referrers API) -----------
    def fact_get(self, registry: str, name: str) -> tuple[str, float] | None:
        """The value of a fact and when it was learnt (Unix time)."""
        ...

    def fact_put(self, registry: str, name: str, value: str, *, at: float) -> None: ...

    # -- reports ------------------------------------------------------------------------
    def save_report(self, rule: str, report: dict[str, Any]) -> None:
        """Keep ``report`` as the latest of ``rule`` (written at once, not buffered)."""
        ...

    def reports(self) -> dict[str, dict[str, Any]]:
        """The latest report of every rule, by rule name."""
        ...

    # -- lifetime -----------------------------------------------------------------------
    def flush(self) -> None:
        """Write what is buffered (the end of a pass calls this)."""
        ...

    def close(self) -> None: ...


class _Bounded(OrderedDict[Any, Any]):
    def put(self, key: Any, value: Any, limit: int) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > limit:
            self.popitem(last=False)


class MemoryStore:
    """A ``StateStore`` that lives as long as the process: ``state: {path: none}``."""

    def __init__(self) -> None:
        # (registry, repository, rule) -> tag -> record
        self._tags: dict[tuple[str, str, str], dict[str, TagRecord]] = {}
        self._tag_count = 0
        self._blobs = _Bounded()  # (registry, digest) -> repository
        self._images = _Bounded()  # (registry, repository) -> digest
        self._noted = _Bounded()  # (registry, digest) of images whose blobs are recorded
        self._facts: dict[tuple[str, str], tuple[str, float]] = {}
        self._sizes = _Bounded()  # image digest -> {blob digest: size}
        self._reports: dict[str, dict[str, Any]] = {}

    def tag_get(self, rule: str, registry: str, repository: str, tag: str) -> TagRecord | None:
        return self._tags.get((registry, repository, rule), {}).get(tag)

    def tag_list(self, rule: str, registry: str, repository: str) -> dict[str, TagRecord]:
        return dict(self._tags.get((registry, repository, rule), {}))

    def tag_put(
        self,
        rule: str,
        registry: str,
        repository: str,
        tag: str,
        digest: str,
        *,
        at: float,
        trusted_until: float = 0.0,
    ) -> None:
        tags = self._tags.setdefault((registry, repository, rule), {})
        if tag not in tags:
            if self._tag_count >= MAX_TAGS:
                return  # a cache that is full only costs requests
            self._tag_count += 1
        tags[tag] = TagRecord(digest, at, trusted_until)

    def tag_distrust(self, rule: str, registry: str, repository: str, tag: str) -> None:
        tags = self._tags.get((registry, repository, rule), {})
        old = tags.get(tag)
        if old is not None:
            tags[tag] = TagRecord(old.digest, old.at, 0.0)

    def tag_delete(self, rule: str, registry: str, repository: str, tag: str) -> None:
        if self._tags.get((registry, repository, rule), {}).pop(tag, None) is not None:
            self._tag_count -= 1

    def blob_where(self, registry: str, digest: str) -> str | None:
        found: str | None = self._blobs.get((registry, digest))
        return found

    def blob_put(self, registry: str, digest: str, repository: str) -> None:
        self._blobs.put((registry, digest), repository, MAX_BLOBS)

    def blob_delete(self, registry: str, digest: str) -> None:
        self._blobs.pop((registry, digest), None)

    def repository_forget(self, registry: str, repository: str) -> None:
        for key in [
            k for k, repo in self._blobs.items() if k[0] == registry and repo == repository
        ]:
            del self._blobs[key]

    def image_put(
        self, registry: str, repository: str, digest: str, *, noted: bool = False
    ) -> None:
        self._images.put((registry, repository), digest, MAX_IMAGES)
        if noted:
            self._noted.put((registry, digest), True, MAX_IMAGES)

    def image_list(self, registry: str, limit: int) -> list[tuple[str, str]]:
        out = []
        for (reg, repo), digest in reversed(self._images.items()):
            if reg == registry and (reg, digest) not in self._noted:
                out.append((repo, digest))
                if len(out) >= limit:
                    break
        return out

    def sizes_get(self, digest: str) -> dict[str, int] | None:
        found: dict[str, int] | None = self._sizes.get(digest)
        return found

    def sizes_put(self, digest: str, sizes: dict[str, int]) -> None:
        self._sizes.put(digest, sizes, MAX_IMAGES)

    def fact_get(self, registry: str, name: str) -> tuple[str, float] | None:
        return self._facts.get((registry, name))

    def fact_put(self, registry: str, name: str, value: str, *, at: float) -> None:
        self._facts[(registry, name)] = (value, at)

    def save_report(self, rule: str, report: dict[str, Any]) -> None:
        self._reports[rule] = report

    def reports(self) -> dict[str, dict[str, Any]]:
        return dict(self._reports)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
