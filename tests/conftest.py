"""Fixtures: real registries on loopback, started per test or per module."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.registry import Registry, RegistryFactory
from tests.helpers.zuul import ZuulFactory

# Registry implementations a test may run against, by ``indirect`` parametrisation of
# ``source``/``target``: ``@pytest.mark.parametrize("target", IMPLEMENTATIONS, indirect=True)``.
IMPLEMENTATIONS = ("distribution", "zuul")


@pytest.fixture
def registries(tmp_path: Path) -> Iterator[RegistryFactory]:
    """A factory of fresh registries, stopped when the test ends."""
    factory = RegistryFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def zuul_registries(tmp_path: Path) -> Iterator[ZuulFactory]:
    """A factory of fresh zuul-registry processes, stopped when the test ends."""
    factory = ZuulFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


def _registry(request: pytest.FixtureRequest) -> Registry:
    kind = getattr(request, "param", "distribution")
    if kind == "zuul":
        factory: ZuulFactory = request.getfixturevalue("zuul_registries")
        return factory()
    assert kind == "distribution", kind
    return request.getfixturevalue("registries")()  # type: ignore[no-any-return]


@pytest.fixture
def source(request: pytest.FixtureRequest) -> Registry:
    """A distribution registry, or the implementation the test parametrises it with."""
    return _registry(request)


@pytest.fixture
def target(request: pytest.FixtureRequest) -> Registry:
    return _registry(request)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In CI a skip is a failure: what the docs say is tested must run there.

    Locally a test may skip for a missing tool (its reason shows with ``-ra``); CI
    installs every tool, so a skip there means a test silently stopped testing.
    """
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and os.environ.get("CI") == "true":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every tool is installed: {reason}"


@pytest.fixture(autouse=True)
def _private_state_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own default state store: ``syncd`` run by a test (in-process or as a
    subprocess, which inherits the environment) must not share facts with another test."""
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
