"""Which event loop the commands run on (syncd/event_loop.py)."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from syncd import event_loop
from syncd.errors import ConfigError


async def _loop_module() -> str:
    return event_loop.name()


def test_uvloop_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(event_loop.ENV, raising=False)
    assert event_loop.loop_factory() is uvloop.new_event_loop
    assert event_loop.run(_loop_module()) == "uvloop"


@pytest.mark.parametrize("value", ["asyncio", " AsyncIO "])
def test_asyncio_on_request(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(event_loop.ENV, value)
    assert event_loop.loop_factory() is None
    assert event_loop.run(_loop_module()) == "asyncio"
    # A caller's own choice wins over the environment (bench.daemon's floor).
    assert event_loop.run(_loop_module(), "uvloop") == "uvloop"


def test_an_unknown_loop_is_a_usage_error_and_leaves_no_coroutine_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(event_loop.ENV, "tokio")
    with pytest.raises(ConfigError, match=r"SYNCD_EVENT_LOOP='tokio': expected one of uvloop"):
        # filterwarnings=error: an un-awaited coroutine would fail the test
        event_loop.run(_loop_module())


def test_without_uvloop_the_default_falls_back_and_an_explicit_choice_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError
    assert event_loop.loop_factory("") is None
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        event_loop.loop_factory("uvloop")


def test_the_runner_leaves_no_loop_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second run in the same process (tests, the cluster status reader) starts clean."""
    monkeypatch.delenv(event_loop.ENV, raising=False)
    assert event_loop.run(_loop_module()) == "uvloop"
    assert event_loop.run(_loop_module()) == "uvloop"
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
