"""When each rule runs under ``syncd run``.

Every rule has its own loop task, so a slow rule never delays another, and a rule can never
run twice at once: its passes happen one after another inside that task.

* **Periodic passes.** Every rule runs once when the scheduler starts (and when a reload adds
  or changes it). After that, an ``interval`` rule runs again ``interval`` after the *start* of
  its previous pass, stretched or shrunk by up to 10% at random so that rules loaded together
  drift apart instead of hitting the registries in step. A ``schedule`` (cron, evaluated in
  UTC) rule runs at the cron times. A tick that falls while the previous pass is still running
  is skipped, not queued, the way regsync's ``SkipIfStillRunning`` does it.
* **Webhook passes.** ``trigger(events)`` finds the rules watching each pushed repository and
  queues those repositories for them. The first event opens a debounce window (1 s); events
  arriving until the pass starts are merged into it, so a burst of pushes costs one pass,
  limited to the repositories named. Triggers arriving during a pass queue exactly one
  follow-up pass. A periodic pass covers everything queued before it started.

The scheduler never moves bytes: it calls the ``run_rule`` callable it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from croniter import croniter

from syncd.config.schema import RuleConfig
from syncd.metrics import Metrics
from syncd.webhooks import RepoEvent

logger = logging.getLogger(__name__)

JITTER = 0.10
DEBOUNCE_SECONDS = 1.0


class PassOutcome(Protocol):
    """What the scheduler reads from the result of one pass (``sync.RulePassResult``)."""

    @property
    def synced(self) -> int: ...
    @property
    def skipped(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def seconds(self) -> float: ...
    @property
    def ok(self) -> bool: ...


RunRule = Callable[[RuleConfig, Collection[str] | None], Awaitable[PassOutcome]]
"""One pass of one rule; the second argument limits it to those source repositories."""

MatchRules = Callable[[list[RuleConfig], str], Iterable[RuleConfig]]
"""The rules (of those given) that watch a source repository: ``rules.rules_for_repository``."""


def next_delay(rule: RuleConfig, *, rng: random.Random, now: datetime | None = None) -> float:
    """Seconds from ``now`` until the rule's next periodic pass should start."""
    if rule.schedule:
        now = now or datetime.now(UTC)
        nxt: datetime = croniter(rule.schedule, now).get_next(datetime)
        return max(0.0, (nxt - now).total_seconds())
    return rule.interval * (1.0 + rng.uniform(-JITTER, JITTER))


def nominal_period(rule: RuleConfig) -> float:
    """The rule's period in seconds, for ``syncd_rule_interval_seconds`` (cron: one gap)."""
    if rule.schedule:
        it = croniter(rule.schedule, datetime.now(UTC))
        first: datetime = it.get_next(datetime)
        second: datetime = it.get_next(datetime)
        return (second - first).total_seconds()
    return rule.interval


@dataclass(eq=False)
class _Slot:
    """The scheduling state of one rule; read and written only on the event loop."""

    rule: RuleConfig
    due: float  # loop time of the next periodic pass
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    pending: set[str] = field(default_factory=set)  # repositories queued by webhooks
    pending_since: float | None = None  # when the debounce window opened
    generation: int = 0  # bumped when a reload changes the rule
    running: bool = False
    retired: bool = False


class Scheduler:
    """Runs each rule on its own schedule, plus debounced webhook triggers.

    ``set_rules`` may be called before or during ``run``; ``stop`` lets running passes end
    and starts no new ones, after which ``run`` returns. Cancelling ``run`` cancels the passes.
    """

    def __init__(
        self,
        run_rule: RunRule,
        *,
        match: MatchRules,
        metrics: Metrics | None = None,
        debounce: float = DEBOUNCE_SECONDS,
        rng: random.Random | None = None,
    ) -> None:
        self._run_rule = run_rule
        self._match = match
        self._metrics = metrics
        self._debounce = debounce
        self._rng = rng or random.Random()
        self._slots: dict[str, _Slot] = {}
        self._tasks: asyncio.TaskGroup | None = None
        self._stopping = False
        self._stopped = asyncio.Event()
        self._started = False
        self._first_pass = False

    # -- state read by the server and the lifecycle -------------------------------------
    @property
    def ready(self) -> bool:
        """True once the first pass has started (or there is no rule to start)."""
        return self._first_pass or (self._started and not self._slots)

    def running(self) -> list[str]:
        """Names of the rules with a pass in flight."""
        return sorted(name for name, s in self._slots.items() if s.running)

    def pending(self, name: str) -> frozenset[str]:
        """The repositories webhooks have queued for rule ``name`` and no pass has taken yet."""
        slot = self._slots.get(name)
        return frozenset(slot.pending) if slot is not None else frozenset()

    def rules(self) -> list[RuleConfig]:
        return [s.rule for s in self._slots.values() if not s.retired]

    # -- control ------------------------------------------------------------------------
    def set_rules(self, rules: Sequence[RuleConfig]) -> None:
        """Swap the rule set. Passes in flight finish with the rule they started with.

        New and changed rules run at once; removed rules stop after their current pass.
        """
        now = asyncio.get_running_loop().time()
        wanted = {r.name: r for r in rules}
        for name, old in self._slots.items():
            if name not in wanted and not old.retired:
                old.retired = True
                old.pending.clear()
                old.wake.set()
                self._forget_metric(name)
        for rule in rules:
            slot = self._slots.get(rule.name)
            if slot is None:
                slot = self._slots[rule.name] = _Slot(rule, due=now)
                if self._tasks is not None:
                    self._tasks.create_task(self._loop(slot), name=f"rule:{rule.name}")
            elif slot.retired or slot.rule != rule:
                # A slot whose loop is still finishing a pass is reused, so the rule never
                # has two loops (and two passes) at once.
                slot.retired = False
                slot.rule = rule
                slot.due = now
                slot.generation += 1
                slot.wake.set()
            if self._metrics is not None:
                self._metrics.rule_interval.labels(rule=rule.name).set(nominal_period(rule))

    def trigger(self, events: Iterable[RepoEvent]) -> list[str]:
        """Queue webhook passes for the rules watching these repositories; their names."""
        if self._stopping:
            return []
        rules = self.rules()
        queued: dict[str, set[str]] = {}
        for event in events:
            for rule in self._match(rules, event.repository):
                queued.setdefault(rule.name, set()).add(event.repository)
        now = asyncio.get_running_loop().time()
        for name, repositories in queued.items():
            slot = self._slots[name]
            if slot.pending_since is None:
                slot.pending_since = now
            slot.pending |= repositories
            slot.wake.set()
        return sorted(queued)

    def stop(self) -> None:
        """Start no new pass; ``run`` returns once the passes in flight have ended."""
        self._stopping = True
        for slot in self._slots.values():
            slot.pending.clear()
            slot.wake.set()
        self._stopped.set()

    async def run(self) -> None:
        """Run every rule's loop until ``stop`` (graceful) or cancellation (passes cancelled)."""
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            self._started = True
            for name, slot in self._slots.items():
                tasks.create_task(self._loop(slot), name=f"rule:{name}")
            # Keep the group open (and able to take new rules) until stop().
            await self._stopped.wait()
        self._tasks = None

    # -- one rule -----------------------------------------------------------------------
    async def _loop(self, slot: _Slot) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not (self._stopping or slot.retired):
                # Cleared before reading the state, so a trigger arriving after this point
                # sets it again and the wait below returns at once.
                slot.wake.clear()
                now = loop.time()
                window_end = (
                    slot.pending_since + self._debounce if slot.pending_since is not None else None
                )
                if now >= slot.due:
                    await self._periodic_pass(slot)
                elif window_end is not None and now >= window_end:
                    repositories = frozenset(slot.pending)
                    slot.pending.clear()
                    slot.pending_since = None
                    await self._pass(slot, repositories, "webhook")
                else:
                    wake_at = slot.due if window_end is None else min(slot.due, window_end)
                    try:
                        async with asyncio.timeout(wake_at - now):
                            await slot.wake.wait()
                    except TimeoutError:
                        pass
        finally:
            # Only a retired or stopped loop gets here; drop it unless a reload revived the
            # name while this loop was finishing its last pass (then the loop was never left).
            if self._slots.get(slot.rule.name) is slot and slot.retired:
                del self._slots[slot.rule.name]

    async def _periodic_pass(self, slot: _Slot) -> None:
        loop = asyncio.get_running_loop()
        generation = slot.generation
        # A full pass lists everything, so it covers what webhooks queued until now.
        slot.pending.clear()
        slot.pending_since = None
        started = loop.time()
        await self._pass(slot, None, "schedule")
        if slot.generation != generation:
            return  # a reload changed the rule during the pass: it is due again already
        ended = loop.time()
        due = started + next_delay(slot.rule, rng=self._rng)
        if due <= ended:
            # The pass overran its period: skip the missed tick instead of running back to back.
            due = ended + next_delay(slot.rule, rng=self._rng)
        slot.due = due

    async def _pass(self, slot: _Slot, repositories: frozenset[str] | None, trigger: str) -> None:
        rule = slot.rule
        self._first_pass = True
        slot.running = True
        fields: dict[str, object] = {"rule": rule.name, "trigger": trigger}
        if repositories is not None:
            fields["repositories"] = sorted(repositories)
        logger.info("rule pass started", extra=fields)
        try:
            outcome = await self._run_rule(rule, repositories)
        except asyncio.CancelledError:
            logger.warning("rule pass cancelled", extra={**fields, "result": "cancelled"})
            raise
        except Exception:
            # A bug or an unexpected error in one pass must not stop the rule's schedule.
            logger.exception("rule pass crashed", extra={**fields, "result": "error"})
        else:
            # sync.py logs the pass summary at info; this adds only what triggered it.
            logger.debug(
                "rule pass finished",
                extra={
                    **fields,
                    "result": "success" if outcome.ok else "failure",
                    "synced": outcome.synced,
                    "skipped": outcome.skipped,
                    "failed": outcome.failed,
                    "seconds": round(outcome.seconds, 3),
                },
            )
        finally:
            slot.running = False

    def _forget_metric(self, name: str) -> None:
        if self._metrics is None:
            return
        with contextlib.suppress(KeyError):
            self._metrics.rule_interval.remove(name)
