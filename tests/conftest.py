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


@pytest.fixture(autouse=True)
def _private_state_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own default state store: ``syncd`` run by a test (in-process or as a
    subprocess, which inherits the environment) must not share facts with another test."""
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
