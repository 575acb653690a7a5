"""The long-lived process's heap: what survives a pass is moved out of the cyclic GC's way.

A daemon keeps what it learns between passes (manifests, blob locations, target facts, the
state store's memory): hundreds of thousands of long-lived objects at 50,000 tags. CPython's
cyclic collector walks the whole tracked heap on every full collection and on the older
generations' collections, which a request-heavy pass triggers thousands of times; a warm
daemon then spent more CPU per pass than a fresh ``once`` making the same requests
(docs/benchmarks.md, "The daemon's steady pass"). ``gc.freeze()`` (Python 3.7+, the
gc module documentation) moves every object alive at that moment into a permanent generation
the collector skips; objects freed by reference count are freed as before.

What it costs: a reference cycle that becomes garbage after being frozen is only found by
the next full collection. So every ``full_every`` seconds the heap is unfrozen, collected
in full once, and frozen again: cyclic garbage is bounded by that period, not leaked.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)

# One full collection of everything an hour: cyclic garbage from frozen objects (rare: the
# caches hold acyclic values) lives at most this long.
FULL_COLLECTION_EVERY = 3600.0


class HeapKeeper:
    """Called after every pass of the daemon (from the event loop, so never concurrently)."""

    def __init__(self, full_every: float = FULL_COLLECTION_EVERY) -> None:
        self._full_every = full_every
        self._last_full = time.monotonic()

    def after_pass(self) -> None:
        now = time.monotonic()
        if now - self._last_full >= self._full_every:
            gc.unfreeze()
            self._last_full = now
        # Collects what the pass left in cycles (young objects only, unless just unfrozen),
        # then freezes what is left: the learned state, the sessions, the caches.
        collected = gc.collect()
        gc.freeze()
        log.debug(
            "heap: %d objects frozen, %d collected",
            gc.get_freeze_count(),
            collected,
            extra={"event": "heap"},
        )
