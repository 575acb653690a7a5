"""The state store of a cluster: the replicas share it through etcd under ``PREFIX state/``.

``StateStore`` is synchronous and every call short; etcd is across the network. So each
replica keeps the whole store in memory (``MemoryStore``, loaded from etcd when it opens and
kept current by a watch), reads only from there, and writes there at once and to etcd
behind: ``flush`` (the end of every pass) sends what changed, up to 64 keys per
transaction. A unit that moves to another replica finds what its former owner wrote: the
tags syncd pushed (what ``prune`` may delete), recheck trust, blob locations, reports.

Like every backend, this one is a cache of facts about registries, checked against the
registry before anything is decided from it (syncd/state.py); a write lost with etcd costs
requests, never a wrong deletion. A write that fails stays queued for the next flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, unquote

from syncd import event_loop
from syncd.cluster.etcd import EtcdSession, EtcdUnavailableError, closed_under_us
from syncd.config.schema import ClusterConfig
from syncd.metrics import Metrics
from syncd.state import MemoryStore, TagRecord

log = logging.getLogger(__name__)

BATCH = 64  # etcd's default --max-txn-ops is 128


def _q(part: str) -> str:
    return quote(part, safe="")


class EtcdStore:
    """A ``StateStore`` shared by the replicas of a cluster (see the module docstring)."""

    def __init__(self, config: ClusterConfig, *, metrics: Metrics | None = None) -> None:
        self._prefix = f"{config.prefix}state/"
        self._etcd = EtcdSession(
            config.etcd, timeout=max(1.0, config.lease_ttl / 3), metrics=metrics
        )
        self._ttl = config.lease_ttl
        self._local = MemoryStore()
        # (registry, digest) -> repository, for repository_forget (MemoryStore lists none)
        self._blobs: dict[tuple[str, str], str] = {}
        self._pending: dict[str, bytes | None] = {}  # key -> value, None: delete
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._watch: Any = None  # the aetcd watch being followed, ended by ``aclose``
        self._closing = False

    # -- lifetime ---------------------------------------------------------------------
    async def start(self) -> None:
        """Load the store from etcd and follow it; without etcd, start empty and retry."""
        revision = 0
        try:
            revision = await self._load()
        except EtcdUnavailableError as e:
            log.warning("state store: etcd unavailable (%s); starting empty", e)
        self._tasks = [
            asyncio.create_task(self._follow(revision), name="state-watch"),
            asyncio.create_task(self._write_behind(), name="state-writer"),
        ]

    async def aclose(self) -> None:
        """Send what is queued (bounded by one request timeout), then stop."""
        with contextlib.suppress(EtcdUnavailableError):
            await self._send()
        # The watch is ended through aetcd's own cancel first: cancelling the task alone
        # can leave it waiting inside the watch for good (seen as a hang of ``asyncio.run``
        # at exit), and nothing here may wait without a bound.
        self._closing = True
        if self._watch is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._watch.cancel(), self._ttl)
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self._ttl)
        await self._etcd.aclose()

    def flush(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self._wake.set()  # aclose (from the event loop) does the rest

    async def _load(self) -> int:
        got = await self._etcd.call("range", lambda c: c.get_prefix(self._prefix.encode()))
        for kv in got:
            self._apply(kv.key.decode(), kv.value)
        return int(got.header.revision)

    async def _follow(self, revision: int) -> None:
        pause = min(1.0, self._ttl / 4)
        while True:
            try:
                watch = self._watch = await self._etcd.call("watch", self._watch_from(revision))
                async for event in watch:
                    key = event.kv.key.decode()
                    self._apply(key, None if event.kind == "DELETE" else event.kv.value)
                    revision = max(revision, int(event.kv.mod_revision))
            except EtcdUnavailableError:
                pass
            except asyncio.CancelledError:
                if not closed_under_us():
                    raise
                log.debug("state watch ended: its connection was closed")
            except Exception as e:  # the watch stream broke (a member died, a compaction)
                log.debug("state watch ended: %s", type(e).__name__)
            if self._closing:
                return
            await asyncio.sleep(pause)  # sleep-ok: pace of re-watching while etcd is away
            with contextlib.suppress(EtcdUnavailableError):
                revision = await self._load()

    def _watch_from(self, revision: int) -> Callable[[Any], Awaitable[Any]]:
        start = revision + 1 if revision else None
        prefix = self._prefix.encode()
        return lambda c: c.watch_prefix(prefix, start_revision=start)

    async def _write_behind(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._send()
            except EtcdUnavailableError as e:
                log.warning("state store: %s; keeping %d writes queued", e, len(self._pending))
                await asyncio.sleep(min(1.0, self._ttl / 4))  # sleep-ok: retry pace
                self._wake.set()

    async def _send(self) -> None:
        while self._pending:
            batch = dict(list(self._pending.items())[:BATCH])
            for key in batch:
                del self._pending[key]

            async def txn(c: Any, batch: dict[str, bytes | None] = batch) -> Any:
                t = c.transactions
                ops = [
                    t.delete(k.encode()) if v is None else t.put(k.encode(), v)
                    for k, v in batch.items()
                ]
                return await c.transaction(compare=[], success=ops, failure=[])

            try:
                await self._etcd.call("txn", txn)
            except EtcdUnavailableError:
                for key, value in batch.items():
                    self._pending.setdefault(key, value)  # a newer write wins
                raise

    def _queue(self, key: str, value: Any) -> None:
        self._pending[key] = None if value is None else json.dumps(value).encode()

    # -- keys -------------------------------------------------------------------------
    def _key(self, kind: str, *parts: str) -> str:
        return self._prefix + kind + "/" + "/".join(_q(p) for p in parts)

    def _apply(self, key: str, raw: bytes | None) -> None:
        """Mirror one etcd key into the local store (another replica's write, or a load)."""
        kind, _, rest = key[len(self._prefix) :].partition("/")
        parts = [unquote(p) for p in rest.split("/")]
        try:
            value = json.loads(raw) if raw is not None else None
        except ValueError:
            return
        m = self._local
        match kind, parts, value:
            case "tag", [registry, rule, repository, tag], None:
                m.tag_delete(rule, registry, repository, tag)
            case "tag", [registry, rule, repository, tag], [digest, at, until]:
                m.tag_put(rule, registry, repository, tag, digest, at=at, trusted_until=until)
            case "blob", [registry, digest], None:
                m.blob_delete(registry, digest)
                self._blobs.pop((registry, digest), None)
            case "blob", [registry, digest], str(repository):
                m.blob_put(registry, digest, repository)
                self._blobs[(registry, digest)] = repository
            case "image", [registry, repository], [digest, noted]:
                m.image_put(registry, repository, digest, noted=bool(noted))
            case "sizes", [digest], dict(sizes):
                m.sizes_put(digest, sizes)
            case "fact", [registry, name], [text, at]:
                m.fact_put(registry, name, text, at=at)
            case "report", [rule], dict(report):
                m.save_report(rule, report)

    # -- StateStore -------------------------------------------------------------------
    def tag_get(self, rule: str, registry: str, repository: str, tag: str) -> TagRecord | None:
        return self._local.tag_get(rule, registry, repository, tag)

    def tag_list(self, rule: str, registry: str, repository: str) -> dict[str, TagRecord]:
        return self._local.tag_list(rule, registry, repository)

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
        old = self._local.tag_get(rule, registry, repository, tag)
        self._local.tag_put(
            rule, registry, repository, tag, digest, at=at, trusted_until=trusted_until
        )
        if old is not None and old.digest == digest and old.trusted_until == trusted_until == 0:
            return  # a steady pass confirms every tag: nothing another replica needs to hear
        self._queue(self._key("tag", registry, rule, repository, tag), [digest, at, trusted_until])

    def tag_distrust(self, rule: str, registry: str, repository: str, tag: str) -> None:
        old = self._local.tag_get(rule, registry, repository, tag)
        if old is not None:
            self.tag_put(rule, registry, repository, tag, old.digest, at=old.at)

    def tag_delete(self, rule: str, registry: str, repository: str, tag: str) -> None:
        self._local.tag_delete(rule, registry, repository, tag)
        self._queue(self._key("tag", registry, rule, repository, tag), None)

    def blob_where(self, registry: str, digest: str) -> str | None:
        return self._local.blob_where(registry, digest)

    def blob_put(self, registry: str, digest: str, repository: str) -> None:
        if self._local.blob_where(registry, digest) == repository:
            return  # known already: no write to etcd for every blob of every pass
        self._local.blob_put(registry, digest, repository)
        self._blobs[(registry, digest)] = repository
        self._queue(self._key("blob", registry, digest), repository)

    def blob_delete(self, registry: str, digest: str) -> None:
        self._local.blob_delete(registry, digest)
        self._blobs.pop((registry, digest), None)
        self._queue(self._key("blob", registry, digest), None)

    def repository_forget(self, registry: str, repository: str) -> None:
        for (reg, digest), repo in list(self._blobs.items()):
            if reg == registry and repo == repository:
                self.blob_delete(registry, digest)

    def image_put(
        self, registry: str, repository: str, digest: str, *, noted: bool = False
    ) -> None:
        self._local.image_put(registry, repository, digest, noted=noted)
        self._queue(self._key("image", registry, repository), [digest, noted])

    def image_list(self, registry: str, limit: int) -> list[tuple[str, str]]:
        return self._local.image_list(registry, limit)

    def sizes_get(self, digest: str) -> dict[str, int] | None:
        return self._local.sizes_get(digest)

    def sizes_put(self, digest: str, sizes: dict[str, int]) -> None:
        if self._local.sizes_get(digest) == sizes:
            return
        self._local.sizes_put(digest, sizes)
        self._queue(self._key("sizes", digest), sizes)

    def fact_get(self, registry: str, name: str) -> tuple[str, float] | None:
        return self._local.fact_get(registry, name)

    def fact_put(self, registry: str, name: str, value: str, *, at: float) -> None:
        self._local.fact_put(registry, name, value, at=at)
        self._queue(self._key("fact", registry, name), [value, at])

    def save_report(self, rule: str, report: dict[str, Any]) -> None:
        self._local.save_report(rule, report)
        self._queue(self._key("report", rule), report)
        self._wake.set()  # reports are written at once, not at the next flush

    def reports(self) -> dict[str, dict[str, Any]]:
        return self._local.reports()


def stored_reports(config: ClusterConfig) -> dict[str, dict[str, Any]]:
    """The reports the replicas keep in etcd (``syncd status`` when no daemon answers);
    empty when etcd cannot be reached."""

    async def read() -> dict[str, dict[str, Any]]:
        store = EtcdStore(config)
        try:
            with contextlib.suppress(EtcdUnavailableError):
                await store._load()
            return store.reports()
        finally:
            await store._etcd.aclose()

    return event_loop.run(read())
