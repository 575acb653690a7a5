"""One replica of a syncd cluster: lease, membership, unit claims, fence, webhook hand-off.

Keys, all under ``cluster.prefix`` (``P``):

* ``P members/<name>`` — this replica, attached to its lease. The live members are the keys
  present; a replica that dies or is cut off disappears when its lease expires.
* ``P claims/<rule>/<repository>`` — the replica working on that unit, also on its lease.
  Rendezvous hashing over the members says who *should* own a unit; the claim, created only
  if absent (a transaction on version 0), makes sure that at most one replica *does*, even
  while replicas disagree about the members for a moment. A replica releases the claims it
  no longer should hold at the start of that rule's next pass, when none of that rule's copies
  is in flight (passes of one rule never overlap).
* ``P inbox/<name>/<id>`` — a webhook event handed to the owner of its units, on a short
  hand-off lease so that events for a replica that never reads them expire.

Fencing. The lease is renewed every third of its TTL. The replica trusts it until the time
it *sent* the last successful renewal plus the TTL etcd granted, less a margin: etcd cannot
expire the lease earlier than that, so while ``may_write`` is true no other replica can
have taken this replica's units. When that moment passes without a renewal, ``may_write``
turns false at once: no copy starts and no manifest is put; the replica then asks for a new
lease and rejoins when etcd answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from syncd.cluster.etcd import (
    EtcdNotFoundError,
    EtcdSession,
    EtcdUnavailableError,
    closed_under_us,
)
from syncd.cluster.rendezvous import owner, unit_key
from syncd.config.schema import ClusterConfig, RuleConfig
from syncd.metrics import Metrics
from syncd.rules import rules_for_repository
from syncd.webhooks import RepoEvent

log = logging.getLogger(__name__)

# The lease is trusted this long less than etcd could keep it (clock rates and the time a
# manifest PUT takes after the last fence check).
FENCE_MARGIN = 0.5
CLAIM_CONCURRENCY = 16

OnEvents = Callable[[Sequence[RepoEvent]], object]


class _LeaseLostError(Exception):
    pass


async def _put(key: bytes, value: bytes, lease: int, client: Any) -> Any:
    return await client.put(key, value, lease=lease)


async def _revoke(lease: int, client: Any) -> Any:
    return await client.revoke_lease(lease)


class Replica:
    """Implements ``syncd.ownership.Ownership`` for one member of the cluster."""

    def __init__(
        self,
        config: ClusterConfig,
        *,
        metrics: Metrics | None = None,
        on_events: OnEvents | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self._ttl = config.lease_ttl
        self._metrics = metrics
        # Events for this replica's units: webhooks handed over, and units it gained.
        self.on_events: OnEvents = on_events or (lambda events: None)
        self._etcd = EtcdSession(config.etcd, timeout=max(1.0, self._ttl / 3), metrics=metrics)
        p = config.prefix
        self._members_prefix = f"{p}members/"
        self._claims_prefix = f"{p}claims/"
        self._inbox = f"{p}inbox/{self.name}/"
        self._lease: int | None = None
        self._deadline = 0.0  # monotonic time until which the lease is trusted
        self._members: set[str] = set()
        self._claims: set[tuple[str, str]] = set()  # (rule, repository) held by this lease
        self._known: dict[str, set[str]] = {}  # rule -> repositories seen in its passes
        self._handoff: tuple[int, float] | None = None  # (lease id, granted at)
        self._past: set[int] = set()  # leases this process held and has not revoked yet
        self._tasks: set[asyncio.Task[Any]] = set()
        self._fenced_logged = False
        if metrics is not None:
            metrics.enable_cluster(expected_members=config.expected_members)
            # Read at scrape time: the fence turns on by the clock, not at an event.
            metrics.cluster_ready.set_function(lambda: 1.0 if self.ready else 0.0)

    # -- syncd.ownership.Ownership ------------------------------------------------------
    def may_write(self) -> bool:
        alive = self._lease is not None and time.monotonic() < self._deadline
        if not alive and self._lease is not None:
            self._fenced()
        return alive

    def _fenced(self) -> None:
        """Say once per lease that this replica may not write (the lease ran out, or etcd
        says it is gone), whichever notices first: a pass or the keep-alive loop."""
        if not self._fenced_logged:
            self._fenced_logged = True
            log.warning(
                "cluster lease not renewed in time: fenced, no copy starts and no tag is written",
                extra={"event": "cluster_fenced", "replica": self.name},
            )

    async def select(
        self, rule: str, repositories: Sequence[str], *, complete: bool = True
    ) -> list[str]:
        if complete:
            self._known[rule] = set(repositories)
        else:
            self._known.setdefault(rule, set()).update(repositories)
        if not self.may_write():
            return []
        members = sorted(self._members)
        mine = [r for r in repositories if owner(unit_key(rule, r), members) == self.name]
        # No pass of this rule is running (this one is starting): claims of units that moved
        # to another member can go now.
        for held_rule, repo in sorted(self._claims):
            if held_rule == rule and owner(unit_key(rule, repo), members) != self.name:
                await self._release(rule, repo)
        todo = [r for r in mine if (rule, r) not in self._claims]
        gate = asyncio.Semaphore(CLAIM_CONCURRENCY)

        async def claim(repo: str) -> None:
            async with gate:
                await self._claim(rule, repo)

        if todo:
            await asyncio.gather(*(claim(r) for r in todo), return_exceptions=True)
        self._count_units()
        return [r for r in mine if (rule, r) in self._claims]

    # -- readiness and /status ----------------------------------------------------------
    @property
    def ready(self) -> bool:
        """A live lease and a view of the members: this replica may copy."""
        return self.may_write() and bool(self._members)

    def status(self) -> dict[str, Any]:
        """The ``cluster`` part of ``GET /status``."""
        owned: dict[str, list[str]] = {}
        for rule, repo in sorted(self._claims):
            owned.setdefault(rule, []).append(repo)
        return {
            "replica": self.name,
            "ready": self.ready,
            "lease_ttl": self._ttl,
            "lease_remaining": round(max(0.0, self._deadline - time.monotonic()), 3)
            if self._lease is not None
            else 0.0,
            "members": sorted(self._members),
            "expected_members": self.config.expected_members,
            "units_owned": owned,
            "etcd_endpoint": self._etcd.endpoint,
        }

    # -- webhooks -----------------------------------------------------------------------
    def route(self, events: Sequence[RepoEvent], rules: list[RuleConfig]) -> list[RepoEvent]:
        """The events this replica handles itself; the others go to their owners' inboxes."""
        local: list[RepoEvent] = []
        remote: dict[str, list[RepoEvent]] = {}
        members = sorted(self._members)
        for event in events:
            owners = {
                owner(unit_key(r.name, event.repository), members) or self.name
                for r in rules_for_repository(rules, event.repository)
            }
            for name in owners:
                if name == self.name:
                    local.append(event)
                else:
                    remote.setdefault(name, []).append(event)
        for name, handed in remote.items():
            self._spawn(self._hand_off(name, handed), f"hand-off:{name}")
        return local

    async def _hand_off(self, member: str, events: list[RepoEvent]) -> None:
        try:
            lease = await self._handoff_lease()
            for event in events:
                key = f"{self.config.prefix}inbox/{member}/{uuid.uuid4().hex}".encode()
                body = json.dumps(
                    {"repository": event.repository, "tag": event.tag, "digest": event.digest}
                ).encode()
                await self._etcd.call("put", functools.partial(_put, key, body, lease))
            log.info(
                "webhook handed to the owner",
                extra={
                    "event": "cluster_hand_off",
                    "replica": member,
                    "repositories": sorted({e.repository for e in events}),
                },
            )
        except EtcdUnavailableError as e:
            # The owner's next periodic pass covers the push; the webhook is not lost for good.
            log.warning("cannot hand a webhook to %s: %s", member, e)

    async def _handoff_lease(self) -> int:
        # Hand-offs live at most this long: an event nobody read is stale by then, and the
        # periodic pass covers it. One lease serves every hand-off of half its life.
        ttl = max(30, int(self._ttl * 3))
        now = time.monotonic()
        if self._handoff is None or now - self._handoff[1] > ttl / 2:
            lease = await self._etcd.call("lease_grant", lambda c: c.lease(ttl))
            self._handoff = (int(lease.id), now)
        return self._handoff[0]

    # -- the life of a member -----------------------------------------------------------
    async def run(self) -> None:
        """Join, keep the lease, watch the cluster; rejoin after losing etcd. Until cancelled."""
        pause = min(1.0, self._ttl / 4)
        while True:
            try:
                await self._membership()
            except Exception:
                # A bug must not leave the replica fenced for good: log it and rejoin.
                log.exception("cluster: unexpected error; rejoining", extra={"replica": self.name})
            await self._leave_locally()
            await asyncio.sleep(pause)  # sleep-ok: pace of reconnect attempts to etcd

    async def _membership(self) -> None:
        """One membership: join, then keep the lease and watch until either of them ends.

        Not a TaskGroup: a TaskGroup ignores a child that ends cancelled without being told
        to, and would wait for the endless watch while the lease is gone, leaving the replica
        fenced for good. Here the end of either task, however it ends, is the end of the
        membership.
        """
        try:
            revision = await self._join()
        except (EtcdUnavailableError, _LeaseLostError) as e:
            self._rejoining(e)
            return
        tasks = [
            asyncio.create_task(self._keep_alive(), name="cluster-lease"),
            asyncio.create_task(self._watch(revision), name="cluster-watch"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        ended = next(iter(done))
        if ended.cancelled():
            self._rejoining(_LeaseLostError(f"{ended.get_name()} was cancelled"))
            return
        error = ended.exception()
        if error is None or isinstance(error, EtcdUnavailableError | _LeaseLostError):
            self._rejoining(error or _LeaseLostError(f"{ended.get_name()} ended"))
            return
        raise error

    def _rejoining(self, why: BaseException) -> None:
        log.warning(
            "cluster: %s; rejoining",
            why,
            extra={"event": "cluster_rejoin", "replica": self.name},
        )

    async def aclose(self) -> None:
        """Leave: revoke the lease so the others take this replica's units at once."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        lease, self._lease = self._lease, None
        if lease is not None:
            with contextlib.suppress(EtcdUnavailableError, EtcdNotFoundError):
                await self._etcd.call("lease_revoke", lambda c: c.revoke_lease(lease))
        await self._etcd.aclose()

    async def _join(self) -> int:
        if self._lease is not None:
            self._past.add(self._lease)
            self._lease = None
        # Former leases of this process: their claims and member key die with them instead of
        # blocking the rejoin until etcd expires them (etcd also renews every lease's TTL when
        # a new leader is elected, so after an outage they may live another full TTL).
        for old in sorted(self._past):
            with contextlib.suppress(EtcdNotFoundError):  # expired already: as good
                await self._etcd.call("lease_revoke", functools.partial(_revoke, old))
            self._past.discard(old)
        sent = time.monotonic()
        lease = await self._etcd.call("lease_grant", lambda c: c.lease(int(self._ttl)))
        lease_id = int(lease.id)
        key = f"{self._members_prefix}{self.name}".encode()
        value = json.dumps({"lease": lease_id, "started": time.time()}).encode()

        async def create(c: Any) -> tuple[bool, Any]:
            t = c.transactions
            ok, responses = await c.transaction(
                compare=[t.version(key) == 0],
                success=[t.put(key, value, lease=lease_id)],
                failure=[t.get(key)],
            )
            return ok, responses

        ok, _ = await self._etcd.call("txn", create)
        if not ok:
            with contextlib.suppress(EtcdUnavailableError, EtcdNotFoundError):
                await self._etcd.call("lease_revoke", lambda c: c.revoke_lease(lease_id))
            raise EtcdUnavailableError(
                f"another live replica is named {self.name!r}: set cluster.name per replica"
            )
        self._lease = lease_id
        self._deadline = sent + float(lease.ttl) - FENCE_MARGIN
        self._fenced_logged = False
        self._claims.clear()
        revision = await self._resync()
        log.info(
            "joined the cluster",
            extra={
                "event": "cluster_joined",
                "replica": self.name,
                "members": sorted(self._members),
                "etcd": self._etcd.endpoint,
            },
        )
        return revision

    async def _resync(self) -> int:
        """Read this replica's inbox and the members; the revision to watch from.

        Two reads are two revisions. The watch starts after the first (the inbox's): an
        inbox entry is then delivered once, by the read or by the watch, and a member who
        joined between the reads is replayed by the watch (a put or delete applied twice is
        applied once). Starting after the later read would lose a member who joined between
        them, for good.
        """
        inbox = await self._etcd.call("range", lambda c: c.get_prefix(self._inbox.encode()))
        got = await self._etcd.call(
            "range", lambda c: c.get_prefix(self._members_prefix.encode(), keys_only=True)
        )
        before = set(self._members)
        self._members = {kv.key.decode()[len(self._members_prefix) :] for kv in got}
        self._members_changed(before)
        for kv in inbox:
            self._deliver(kv.key, kv.value)
        return int(inbox.header.revision)

    async def _leave_locally(self) -> None:
        self._claims.clear()
        self._count_units()
        await self._etcd.drop()

    async def _keep_alive(self) -> None:
        period = self._ttl / 3
        assert self._lease is not None
        lease = self._lease
        delay = period
        while True:
            await asyncio.sleep(delay)  # sleep-ok: the renewal period of the lease
            sent = time.monotonic()
            try:
                reply = await self._etcd.call("lease_keepalive", lambda c: c.refresh_lease(lease))
            except EtcdUnavailableError as e:
                self._count_renewal("failure")
                if time.monotonic() >= self._deadline:
                    self._fenced()
                    raise _LeaseLostError(f"lease not renewed within its TTL ({e})") from None
                log.warning("cluster lease renewal failed: %s", e, extra={"replica": self.name})
                # The session moved to the next endpoint: try it now, not a period later, so
                # that one dead etcd member does not cost the lease.
                delay = min(0.2, period)
                continue
            delay = period
            if reply is None or reply.TTL <= 0:
                self._count_renewal("failure")
                self._fenced()
                raise _LeaseLostError("etcd says the lease expired")
            self._count_renewal("success")
            self._deadline = sent + float(reply.TTL) - FENCE_MARGIN

    async def _watch(self, revision: int) -> None:
        """Follow members, claims and the inbox; restart the watch on a new connection.

        A broken watch does not cost the lease: only the keep-alive loop decides that.
        """
        pause = min(1.0, self._ttl / 4)
        while True:
            with contextlib.suppress(EtcdUnavailableError):
                await self._watch_once(revision)
            while True:
                try:
                    revision = await self._resync()
                    break
                except EtcdUnavailableError:
                    await asyncio.sleep(pause)  # sleep-ok: pace of retries while etcd is away

    async def _watch_once(self, revision: int) -> None:
        generation = self._etcd.generation
        replaced = self._etcd.replaced
        prefix = self.config.prefix.encode()
        watch = await self._etcd.call(
            "watch", lambda c: c.watch_prefix(prefix, start_revision=revision + 1)
        )
        consume = asyncio.create_task(self._consume(watch))
        swapped = asyncio.create_task(replaced.wait())
        try:
            await asyncio.wait({consume, swapped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (consume, swapped):
                t.cancel()
            await asyncio.gather(consume, swapped, return_exceptions=True)
            if generation == self._etcd.generation:
                try:
                    await asyncio.wait_for(watch.cancel(), self._etcd.timeout)
                except asyncio.CancelledError:
                    if not closed_under_us():
                        raise
                except Exception as e:  # the stream is gone already: nothing to cancel
                    log.debug("cancelling the cluster watch: %s", type(e).__name__)
        if consume.done() and not consume.cancelled() and consume.exception():
            log.info("cluster watch ended: %s", type(consume.exception()).__name__)

    async def _consume(self, watch: Any) -> None:
        async for event in watch:
            key: bytes = event.kv.key
            text = key.decode()
            if text.startswith(self._members_prefix):
                before = set(self._members)
                name = text[len(self._members_prefix) :]
                if event.kind == "DELETE":
                    self._members.discard(name)
                else:
                    self._members.add(name)
                self._members_changed(before)
            elif text.startswith(self._claims_prefix) and event.kind == "DELETE":
                rule, _, repo = text[len(self._claims_prefix) :].partition("/")
                members = sorted(self._members)
                if owner(unit_key(rule, repo), members) == self.name:
                    self.on_events([RepoEvent(repo)])  # released to us: take it now
            elif text.startswith(self._inbox) and event.kind == "PUT":
                self._deliver(key, event.kv.value)

    # -- helpers --------------------------------------------------------------------------
    def _members_changed(self, before: set[str]) -> None:
        if self._metrics is not None:
            self._metrics.cluster_members.set(len(self._members))
        if before == self._members:
            return
        log.info(
            "cluster members changed",
            extra={
                "event": "cluster_members",
                "replica": self.name,
                "members": sorted(self._members),
            },
        )
        # Units this replica gains run now instead of at their rule's next interval.
        old, new = sorted(before), sorted(self._members)
        gained = {
            repo
            for rule, repos in self._known.items()
            for repo in repos
            if owner(unit_key(rule, repo), new) == self.name
            and owner(unit_key(rule, repo), old) != self.name
        }
        if gained and self.ready:
            self.on_events([RepoEvent(r) for r in sorted(gained)])

    def _deliver(self, key: bytes, value: bytes) -> None:
        try:
            doc = json.loads(value)
            event = RepoEvent(str(doc["repository"]), doc.get("tag"), doc.get("digest"))
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed hand-off at %s", key.decode(errors="replace"))
            event = None
        if event is not None:
            self.on_events([event])
        self._spawn(self._etcd.call("delete", lambda c: c.delete(key)), "inbox-delete")

    async def _claim(self, rule: str, repo: str) -> None:
        lease = self._lease
        if lease is None:
            return
        key = f"{self._claims_prefix}{rule}/{repo}".encode()
        mark = f"{self.name}:{lease}".encode()

        async def txn(c: Any) -> tuple[bool, Any]:
            t = c.transactions
            ok, responses = await c.transaction(
                compare=[t.version(key) == 0],
                success=[t.put(key, mark, lease=lease)],
                failure=[t.get(key)],
            )
            return ok, responses

        ok, responses = await self._etcd.call("txn", txn)
        held = ok or any(v == mark for r in responses for v, _ in r)
        if held and self._lease == lease:
            self._claims.add((rule, repo))
        elif not held:
            log.debug(
                "unit %s/%s still claimed by another replica",
                rule,
                repo,
                extra={"rule": rule, "repository": repo, "event": "cluster_claim_busy"},
            )

    async def _release(self, rule: str, repo: str) -> None:
        self._claims.discard((rule, repo))
        lease = self._lease
        key = f"{self._claims_prefix}{rule}/{repo}".encode()
        mark = f"{self.name}:{lease}".encode()

        async def txn(c: Any) -> tuple[bool, Any]:
            t = c.transactions
            ok, responses = await c.transaction(
                compare=[t.value(key) == mark], success=[t.delete(key)], failure=[]
            )
            return ok, responses

        with contextlib.suppress(EtcdUnavailableError):
            await self._etcd.call("txn", txn)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("cluster task %s: %s", task.get_name(), task.exception())

    def _count_renewal(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.cluster_lease_renewals.labels(result=result).inc()

    def _count_units(self) -> None:
        if self._metrics is not None:
            self._metrics.cluster_units_owned.labels(replica=self.name).set(len(self._claims))
            self._metrics.cluster_units.set(sum(len(r) for r in self._known.values()))
