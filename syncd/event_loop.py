"""The event loop every ``syncd`` command runs on.

uvloop (libuv under asyncio's API, the loop aiohttp's documentation recommends) when it is
installed, else asyncio's own. A steady pass is mostly small requests on kept-alive
connections, where the loop's own work per request (socket writes, callbacks, timers) is a
large share of the process's CPU: uvloop takes an eighth (5,000 tags) to a quarter (50,000
tags) off a steady pass's CPU (docs/benchmarks.md, "The daemon at 50,000 tags").

``SYNCD_EVENT_LOOP=asyncio`` keeps asyncio's loop (to rule the loop out when chasing a
problem); ``uvloop`` insists on uvloop and fails if it is missing.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from syncd.errors import ConfigError

_T = TypeVar("_T")

ENV = "SYNCD_EVENT_LOOP"
CHOICES = ("uvloop", "asyncio")


def loop_factory(choice: str | None = None) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory for the chosen loop; None means asyncio's default."""
    choice = (choice if choice is not None else os.environ.get(ENV, "")).strip().lower()
    if choice not in ("", *CHOICES):
        raise ConfigError(f"{ENV}={choice!r}: expected one of {', '.join(CHOICES)}")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError(f"{ENV}=uvloop, but uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


def name() -> str:
    """The loop the running process is on (the daemon's start line says it)."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def run(main: Coroutine[Any, Any, _T], choice: str | None = None) -> _T:
    """``asyncio.run`` on the chosen loop (``choice``, else ``SYNCD_EVENT_LOOP``)."""
    try:
        factory = loop_factory(choice)
    except ConfigError:
        main.close()  # never awaited: no "coroutine was never awaited" warning
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
