"""The scheduler against a fake ``run_rule`` callable (it never touches a registry)."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator, Collection, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from fnmatch import fnmatchcase

import pytest

from syncd.config.schema import RuleConfig
from syncd.daemon.scheduler import JITTER, Scheduler, next_delay, nominal_period
from syncd.metrics import Metrics
from syncd.webhooks import RepoEvent


@dataclass
class Outcome:
    synced: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failed == 0


@dataclass
class Call:
    rule: str
    repositories: frozenset[str] | None
    start: float
    end: float | None = None


@dataclass
class FakeRunner:
    """Records every pass; ``durations[rule]`` makes a rule slow, ``crash`` makes it raise."""

    durations: dict[str, float] = field(default_factory=dict)
    crash: set[str] = field(default_factory=set)
    calls: list[Call] = field(default_factory=list)
    active: dict[str, int] = field(default_factory=dict)
    max_active: dict[str, int] = field(default_factory=dict)
    cancelled: list[str] = field(default_factory=list)

    async def __call__(self, rule: RuleConfig, repositories: Collection[str] | None) -> Outcome:
        loop = asyncio.get_running_loop()
        call = Call(
            rule.name, None if repositories is None else frozenset(repositories), loop.time()
        )
        self.calls.append(call)
        self.active[rule.name] = self.active.get(rule.name, 0) + 1
        self.max_active[rule.name] = max(self.max_active.get(rule.name, 0), self.active[rule.name])
        try:
            # A pass that takes this long is the scenario, not a synchronisation.
            await asyncio.sleep(self.durations.get(rule.name, 0.0))  # sleep-ok
            if rule.name in self.crash:
                raise RuntimeError("boom")
            return Outcome(synced=1)
        except asyncio.CancelledError:
            self.cancelled.append(rule.name)
            raise
        finally:
            self.active[rule.name] -= 1
            call.end = loop.time()

    def of(self, name: str) -> list[Call]:
        return [c for c in self.calls if c.rule == name]


def match(rules: list[RuleConfig], repository: str) -> Iterable[RuleConfig]:
    return [r for r in rules if any(fnmatchcase(repository, p) for p in r.repositories)]


def rule(name: str, interval: float = 3600.0, repos: tuple[str, ...] = ("team/*",)) -> RuleConfig:
    return RuleConfig(
        name=name, source="src", targets=("dst",), repositories=repos, interval=interval
    )


@asynccontextmanager
async def running(sched: Scheduler) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(sched.run())
    try:
        yield task
    finally:
        sched.stop()
        try:
            async with asyncio.timeout(5):
                await task
        except TimeoutError:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


async def wait_for(cond: object, timeout: float = 5.0) -> None:
    assert callable(cond)
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)  # sleep-ok: poll interval of a bounded wait


def test_interval_jitter_stays_within_ten_percent() -> None:
    rng = random.Random(7)
    r = rule("a", interval=100.0)
    delays = [next_delay(r, rng=rng) for _ in range(2000)]
    assert min(delays) >= 100.0 * (1 - JITTER)
    assert max(delays) <= 100.0 * (1 + JITTER)
    assert max(delays) - min(delays) > 15  # spread, not a constant


@pytest.mark.parametrize(
    ("schedule", "now", "expected"),
    [
        ("*/10 * * * *", datetime(2026, 11, 29, 9, 3, 0, tzinfo=UTC), 420.0),
        ("0 3 * * *", datetime(2026, 11, 29, 2, 59, 30, tzinfo=UTC), 30.0),
        ("*/5 * * * *", datetime(2026, 11, 29, 9, 5, 0, tzinfo=UTC), 300.0),
    ],
)
def test_cron_delay(schedule: str, now: datetime, expected: float) -> None:
    r = replace(rule("c"), schedule=schedule)
    assert next_delay(r, rng=random.Random(), now=now) == expected
    assert nominal_period(replace(rule("c"), schedule="*/10 * * * *")) == 600.0


async def test_first_pass_at_start_then_every_interval() -> None:
    runner = FakeRunner()
    sched = Scheduler(runner, match=match)
    sched.set_rules([rule("a", interval=0.2)])
    assert not sched.ready
    async with running(sched):
        await wait_for(lambda: len(runner.of("a")) >= 5)
        assert sched.ready
    starts = [c.start for c in runner.of("a")]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # Never early; late only by event-loop scheduling (generous: the machine is shared).
    assert all(0.2 * (1 - JITTER) - 0.01 <= g <= 0.2 * (1 + JITTER) + 0.5 for g in gaps), gaps
    assert all(c.repositories is None for c in runner.calls)


async def test_a_rule_never_overlaps_itself_and_skips_missed_ticks() -> None:
    runner = FakeRunner(durations={"slow": 0.3})
    sched = Scheduler(runner, match=match)
    sched.set_rules([rule("slow", interval=0.05)])
    async with running(sched):
        await wait_for(lambda: len(runner.of("slow")) >= 3)
        sched.trigger([RepoEvent("team/x")])
        sched.trigger([RepoEvent("team/y")])
        await wait_for(lambda: len(runner.of("slow")) >= 5)
    calls = runner.of("slow")
    assert runner.max_active["slow"] == 1
    for prev, nxt in itertools.pairwise(calls):
        assert nxt.start >= (prev.end or 0)
        if nxt.repositories is None:
            # The 0.05 s ticks missed during the 0.3 s pass are skipped, not run back to back.
            assert nxt.start - (prev.end or 0) >= 0.05 * (1 - JITTER) - 0.005


async def test_a_slow_rule_does_not_delay_the_others() -> None:
    runner = FakeRunner(durations={"slow": 1.5})
    sched = Scheduler(runner, match=match)
    sched.set_rules([rule("slow", interval=0.1), rule("fast", interval=0.1)])
    async with running(sched):
        await wait_for(lambda: len(runner.of("fast")) >= 6, timeout=1.4)
        assert len(runner.of("slow")) == 1  # still in its first pass


async def test_triggers_during_a_pass_queue_exactly_one_follow_up() -> None:
    runner = FakeRunner(durations={"a": 0.4})
    sched = Scheduler(runner, match=match, debounce=0.05)
    sched.set_rules([rule("a")])
    async with running(sched):
        await wait_for(lambda: len(runner.of("a")) == 1)  # the start-up pass is running
        for repo in ("team/x", "team/y", "team/x", "team/z"):
            assert sched.trigger([RepoEvent(repo, "v1")]) == ["a"]
            await asyncio.sleep(0.02)  # sleep-ok: triggers spread over the running pass
        await wait_for(lambda: len(runner.of("a")) == 2 and runner.of("a")[1].end is not None)
        assert sched.pending("a") == frozenset()  # nothing else is queued
    calls = runner.of("a")
    assert len(calls) == 2
    assert calls[0].repositories is None
    assert calls[1].repositories == {"team/x", "team/y", "team/z"}
    assert calls[1].start >= (calls[0].end or 0)


async def test_webhook_bursts_are_debounced_and_merged() -> None:
    runner = FakeRunner()
    sched = Scheduler(runner, match=match, debounce=0.3)
    sched.set_rules([rule("a"), rule("b", repos=("other/*",))])
    async with running(sched):
        await wait_for(lambda: len(runner.calls) == 2)  # both start-up passes
        await wait_for(lambda: all(c.end is not None for c in runner.calls))
        loop = asyncio.get_running_loop()
        first = loop.time()
        sched.trigger([RepoEvent("team/one", "v1")])
        await asyncio.sleep(0.1)  # sleep-ok: the second event lands inside the debounce window
        sched.trigger([RepoEvent("team/two", "v1"), RepoEvent("nobody/watches", "v1")])
        await wait_for(lambda: len(runner.of("a")) == 2)
        assert sched.pending("a") == frozenset() and sched.pending("b") == frozenset()
    follow = runner.of("a")[1]
    assert follow.repositories == {"team/one", "team/two"}
    assert follow.start - first >= 0.29
    assert follow.start - first < 0.3 + 0.5
    assert len(runner.of("b")) == 1  # not watching those repositories


async def test_unmatched_event_triggers_nothing() -> None:
    runner = FakeRunner()
    sched = Scheduler(runner, match=match, debounce=0.01)
    sched.set_rules([rule("a")])
    async with running(sched):
        await wait_for(lambda: len(runner.calls) == 1)
        assert sched.trigger([RepoEvent("elsewhere/app", "v1")]) == []
        assert sched.pending("a") == frozenset()
    assert len(runner.calls) == 1


async def test_reload_adds_changes_and_removes_rules_between_passes() -> None:
    metrics = Metrics()
    runner = FakeRunner(durations={"gone": 0.4})
    sched = Scheduler(runner, match=match, metrics=metrics)
    sched.set_rules([rule("keep", interval=60), rule("gone", interval=0.05)])
    async with running(sched):
        await wait_for(lambda: len(runner.of("gone")) == 1 and len(runner.of("keep")) == 1)
        assert metrics.rule_interval.labels(rule="gone")._value.get() == 0.05
        # "gone" is mid-pass: removing it lets that pass finish, then nothing more.
        sched.set_rules([replace(rule("keep", interval=60), target_prefix="m/"), rule("new")])
        await wait_for(lambda: len(runner.of("new")) == 1)
        await wait_for(lambda: len(runner.of("keep")) == 2)  # changed: runs at once
        await wait_for(lambda: runner.of("gone")[0].end is not None)
        # The rule's loop ends after that pass: nothing of "gone" can run any more.
        await wait_for(lambda: all(t.get_name() != "rule:gone" for t in asyncio.all_tasks()))
        assert [r.name for r in sched.rules()] == ["keep", "new"]
    assert len(runner.of("gone")) == 1
    assert runner.cancelled == []
    text = metrics.exposition().decode()
    assert 'syncd_rule_interval_seconds{rule="gone"}' not in text
    assert 'syncd_rule_interval_seconds{rule="new"} 3600.0' in text


async def test_a_rule_removed_and_readded_during_its_pass_never_overlaps() -> None:
    runner = FakeRunner(durations={"a": 0.3})
    sched = Scheduler(runner, match=match)
    sched.set_rules([rule("a", interval=0.05)])
    async with running(sched):
        await wait_for(lambda: len(runner.of("a")) == 1)
        sched.set_rules([])
        sched.set_rules([rule("a", interval=0.05)])
        await wait_for(lambda: len(runner.of("a")) >= 3)
    assert runner.max_active["a"] == 1


async def test_a_crashing_pass_keeps_the_schedule(caplog: pytest.LogCaptureFixture) -> None:
    runner = FakeRunner(crash={"bad"})
    sched = Scheduler(runner, match=match)
    sched.set_rules([rule("bad", interval=0.05)])
    async with running(sched):
        await wait_for(lambda: len(runner.of("bad")) >= 3)
    crashed = [r for r in caplog.records if r.getMessage() == "rule pass crashed"]
    assert crashed and getattr(crashed[0], "rule", None) == "bad"


async def test_stop_lets_the_pass_in_flight_finish() -> None:
    runner = FakeRunner(durations={"a": 0.3})
    sched = Scheduler(runner, match=match)
    sched.set_rules([rule("a", interval=0.01)])
    task = asyncio.create_task(sched.run())
    await wait_for(lambda: len(runner.calls) == 1)
    sched.stop()
    assert sched.trigger([RepoEvent("team/x")]) == []
    async with asyncio.timeout(2):
        await task
    assert len(runner.calls) == 1 and runner.calls[0].end is not None
    assert runner.cancelled == []


async def test_cancelling_run_cancels_the_passes() -> None:
    runner = FakeRunner(durations={"a": 30})
    sched = Scheduler(runner, match=match)
    sched.set_rules([rule("a")])
    task = asyncio.create_task(sched.run())
    await wait_for(lambda: len(runner.calls) == 1)
    assert sched.running() == ["a"]
    sched.stop()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert runner.cancelled == ["a"]


async def test_no_rules_is_ready_at_once() -> None:
    sched = Scheduler(FakeRunner(), match=match)
    sched.set_rules([])
    async with running(sched):
        await asyncio.sleep(0)  # sleep-ok: one turn of the loop, no time
        assert sched.ready
