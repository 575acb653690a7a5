"""A real forward proxy per test (tinyproxy), stopped by PID when the test ends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.forward_proxy import ForwardProxyFactory

PROXY_VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "all_proxy")


@pytest.fixture
def forward_proxies(tmp_path: Path) -> Iterator[ForwardProxyFactory]:
    factory = ForwardProxyFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(autouse=True)
def _no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sets the proxy variables it is about; none leak in from the shell."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
