"""The daemon's heap keeper: what survives a pass is frozen, cyclic garbage is still found."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from syncd.daemon.heap import HeapKeeper


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_what_survives_a_pass_is_frozen() -> None:
    keeper = HeapKeeper(full_every=3600)
    kept = [object() for _ in range(10)]
    keeper.after_pass()
    assert gc.get_freeze_count() >= len(kept)


def test_cycles_that_die_frozen_wait_for_the_next_full_collection() -> None:
    keeper = HeapKeeper(full_every=3600)
    c = _Cycle()
    ref = weakref.ref(c)
    keeper.after_pass()  # frozen while alive
    del c  # cyclic garbage inside the permanent generation
    keeper.after_pass()
    assert ref() is not None, "a frozen cycle is skipped until the full collection"
    keeper._full_every = 0  # the hour is up
    keeper.after_pass()  # unfreezes, collects everything, freezes again
    assert ref() is None
