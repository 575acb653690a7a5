"""Fixtures: real registries on loopback, started per test or per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.registry import Registry, RegistryFactory


@pytest.fixture
def registries(tmp_path: Path) -> Iterator[RegistryFactory]:
    """A factory of fresh registries, stopped when the test ends."""
    factory = RegistryFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def source(registries: RegistryFactory) -> Registry:
    return registries()


@pytest.fixture
def target(registries: RegistryFactory) -> Registry:
    return registries()
