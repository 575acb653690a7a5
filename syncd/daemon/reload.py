"""Hot reload: SIGHUP, or a change of the config file's content, loads the config again.

A reload builds and validates a whole new ``Config`` before anything changes. If it is
valid, ``apply`` swaps it in (the lifecycle hands the rules to the scheduler, which starts
using them between passes); if not, every problem is logged, the failure is counted in
``syncd_config_reloads_total{result="failure"}``, and the running rules stay as they were.

The file is polled (content hash every ``poll_interval`` seconds) rather than watched with
inotify: it works the same on every filesystem, and it follows the symlink swap Kubernetes
does when a mounted ConfigMap changes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable

from syncd.config.schema import Config
from syncd.errors import ConfigError
from syncd.metrics import Metrics

logger = logging.getLogger(__name__)

POLL_SECONDS = 2.0
# An editor or a `cp` may leave a half-written file for a moment: a change is read again
# after this pause, until two reads agree (bounded), before it is loaded.
_SETTLE_SECONDS = 0.2
_SETTLE_TRIES = 5


def fingerprint(path: str) -> str | None:
    """The sha256 of the file's content, or ``None`` if it cannot be read."""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


class ConfigWatcher:
    """Reloads ``path`` when asked (``request``, from SIGHUP) or when its content changes."""

    def __init__(
        self,
        path: str,
        *,
        load: Callable[[str], Config],
        apply: Callable[[Config], Awaitable[None]],
        metrics: Metrics,
        loaded_fingerprint: str | None,
        poll_interval: float = POLL_SECONDS,
    ) -> None:
        self._path = path
        self._load = load
        self._apply = apply
        self._metrics = metrics
        self._seen = loaded_fingerprint  # the content last loaded, or last rejected
        self._poll = poll_interval
        self._requested = False
        self._wake = asyncio.Event()
        # How many times the file has been looked at: lets a caller wait for "polled, and
        # nothing changed" as an event rather than for a stretch of time.
        self.polls = 0

    def request(self) -> None:
        """Reload as soon as possible, even if the file did not change (SIGHUP)."""
        self._requested = True
        self._wake.set()

    async def run(self) -> None:
        """Poll and reload until cancelled."""
        while True:
            self._wake.clear()
            try:
                async with asyncio.timeout(self._poll):
                    await self._wake.wait()
            except TimeoutError:
                pass
            requested, self._requested = self._requested, False
            if requested:
                await self.reload("signal")
                continue
            current = await asyncio.to_thread(fingerprint, self._path)
            if current != self._seen and await self._settled(current):
                await self.reload("file change")
            self.polls += 1

    async def reload(self, trigger: str) -> bool:
        """Load, validate and apply the config file once; True if it was applied."""
        seen = await asyncio.to_thread(fingerprint, self._path)
        fields: dict[str, object] = {"config_file": self._path, "trigger": trigger}
        try:
            config = await asyncio.to_thread(self._load, self._path)
            await self._apply(config)
        except ConfigError as e:
            self._reject(seen, fields, e)
            return False
        except Exception:
            # Anything else (an unreadable file, a session that fails to open) is a rejected
            # reload too: the old config keeps running.
            logger.exception("config reload failed", extra={**fields, "result": "failure"})
            self._reject(seen, fields, None)
            return False
        self._seen = seen
        self._metrics.config_reloads.labels(result="success").inc()
        self._metrics.config_last_reload_successful.set(1)
        logger.info(
            "config reloaded",
            extra={**fields, "result": "success", "rules": [r.name for r in config.rules]},
        )
        return True

    def _reject(self, seen: str | None, fields: dict[str, object], err: ConfigError | None) -> None:
        # Remember the rejected content so an unchanged broken file is not retried (and
        # counted) on every poll; the next edit or SIGHUP tries again.
        self._seen = seen
        self._metrics.config_reloads.labels(result="failure").inc()
        self._metrics.config_last_reload_successful.set(0)
        if err is not None:
            for problem in err.problems:
                logger.error(
                    "config reload rejected: %s",
                    problem,
                    extra={
                        **fields,
                        "result": "failure",
                        "line": problem.line,
                        "column": problem.column,
                        "key": problem.key,
                    },
                )
            if not err.problems:
                logger.error(
                    "config reload rejected: %s", err, extra={**fields, "result": "failure"}
                )
        logger.warning("keeping the running config", extra={**fields, "result": "failure"})

    async def _settled(self, first: str | None) -> bool:
        """Wait until the file reads the same twice; False if it went back to the old one."""
        current = first
        for _ in range(_SETTLE_TRIES):
            await asyncio.sleep(_SETTLE_SECONDS)
            again = await asyncio.to_thread(fingerprint, self._path)
            if again == current:
                break
            current = again
        return current != self._seen
