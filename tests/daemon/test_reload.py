"""The config watcher with the real loader: file changes, SIGHUP requests, rejected reloads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from syncd.config.load import load_config
from syncd.config.schema import Config
from syncd.daemon.reload import ConfigWatcher, fingerprint
from syncd.metrics import Metrics

VALID = """\
registries:
  src: {{url: "http://127.0.0.1:5001"}}
  dst: {{url: "http://127.0.0.1:5002"}}
rules:
{rules}
"""
RULE = """\
  - name: {name}
    source: src
    targets: [dst]
    repositories: [team/app]
"""
BROKEN = """\
registries:
  src: {url: "http://127.0.0.1:5001"}
rules:
  - name: r1
    source: nowhere
    targets: [dst]
    repositories: [team/app]
    interval: soon
"""


def config_text(*names: str) -> str:
    return VALID.format(rules="".join(RULE.format(name=n) for n in names))


@dataclass
class Harness:
    path: Path
    metrics: Metrics
    watcher: ConfigWatcher
    applied: list[Config] = field(default_factory=list)
    fail_apply: list[bool] = field(default_factory=list)

    def reloads(self, result: str) -> float:
        value: float = self.metrics.config_reloads.labels(result=result)._value.get()
        return value

    def write(self, text: str) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.path)  # atomic, like an editor or a ConfigMap update


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    path = tmp_path / "config.yaml"
    path.write_text(config_text("r1"))
    metrics = Metrics()
    applied: list[Config] = []
    fail_apply: list[bool] = []

    async def apply(config: Config) -> None:
        if fail_apply:
            raise RuntimeError("cannot open sessions")
        applied.append(config)

    watcher = ConfigWatcher(
        str(path),
        load=load_config,
        apply=apply,
        metrics=metrics,
        loaded_fingerprint=fingerprint(str(path)),
        poll_interval=0.1,
    )
    h = Harness(path, metrics, watcher, applied, fail_apply)
    task = asyncio.create_task(watcher.run())
    yield h
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def until(cond: object, timeout: float = 5.0) -> None:
    assert callable(cond)
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.02)  # sleep-ok: poll interval of a bounded wait


async def polled(harness: Harness, times: int = 3) -> None:
    """Wait until the watcher has looked at the file ``times`` more times."""
    start = harness.watcher.polls
    await until(lambda: harness.watcher.polls >= start + times)


async def test_an_unchanged_file_is_not_reloaded(harness: Harness) -> None:
    await polled(harness)
    assert harness.applied == []
    assert harness.reloads("success") == 0


async def test_a_changed_file_is_applied(harness: Harness) -> None:
    harness.write(config_text("r1", "r2"))
    await until(lambda: harness.applied)
    assert [r.name for r in harness.applied[0].rules] == ["r1", "r2"]
    assert harness.reloads("success") == 1
    await polled(harness)
    assert len(harness.applied) == 1  # once per change, not once per poll


async def test_a_request_reloads_even_without_a_change(harness: Harness) -> None:
    harness.watcher.request()
    await until(lambda: harness.applied)
    assert harness.reloads("success") == 1


async def test_a_broken_file_is_rejected_once_and_logged(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    harness.write(BROKEN)
    await until(lambda: harness.reloads("failure") == 1)
    await polled(harness)
    assert harness.reloads("failure") == 1  # the same broken content is not retried per poll
    assert harness.applied == []
    assert harness.metrics.config_last_reload_successful._value.get() == 0
    problems = [r for r in caplog.records if r.getMessage().startswith("config reload rejected")]
    assert len(problems) >= 2  # every problem, not only the first
    assert all(getattr(r, "line", 0) >= 1 for r in problems)
    assert any("interval" in r.getMessage() for r in problems)
    # SIGHUP on the same broken file is tried (and rejected) again.
    harness.watcher.request()
    await until(lambda: harness.reloads("failure") == 2)
    # Fixing the file makes the next poll succeed.
    harness.write(config_text("r1", "fixed"))
    await until(lambda: harness.applied)
    assert harness.metrics.config_last_reload_successful._value.get() == 1


async def test_a_missing_file_is_a_failure(harness: Harness) -> None:
    harness.path.unlink()
    await until(lambda: harness.reloads("failure") == 1)
    assert harness.applied == []


async def test_a_failing_apply_is_a_failure(harness: Harness) -> None:
    harness.fail_apply.append(True)
    harness.write(config_text("r1", "r3"))
    await until(lambda: harness.reloads("failure") == 1)
    assert harness.reloads("success") == 0
