"""A config reload keeps what the daemon learned (real ``syncd run``, SIGHUP): the sessions
and tokens of registries whose config did not change (no new ``/v2/`` ping, no new token
request), and the one-copy-at-a-time guarantee across the old config's pass and the new
one's: a tag whose copy is under way when the reload lands is copied once."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.auth.conftest import USERS, issuers  # noqa: F401 (fixture)
from tests.daemon.conftest import DaemonFactory, wait_until
from tests.helpers.auth import TokenIssuer
from tests.helpers.images import image, push
from tests.helpers.proxy import FaultProxy
from tests.helpers.registry import Registry, RegistryFactory, manifest_raw

MB = 1024 * 1024


def write(path: Path, registries: dict[str, Any], rules: list[dict[str, Any]]) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump({"registries": registries, "rules": rules}, sort_keys=False))
    tmp.replace(path)
    return path


def rule(name: str, interval: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "source": "src",
        "targets": ["dst"],
        "repositories": ["team/app"],
        "interval": interval,
        **extra,
    }


def reloaded(d: Any, n: int) -> bool:
    return len(d.events("config reloaded")) >= n


def test_reload_keeps_sessions_and_tokens(
    registries: RegistryFactory,
    issuers: Callable[..., TokenIssuer],  # noqa: F811
    daemons: DaemonFactory,
    tmp_path: Path,
) -> None:
    issuer = issuers()
    src = registries(auth=issuer.registry_auth())
    dst = registries(auth=issuer.registry_auth())
    seed = issuer.seed_token("team/app")
    push(src.url, "team/app", "v1", image("keep-1"), token=seed)
    regs = {
        "src": {"url": src.url, "username": "reader", "password": USERS["reader"]},
        "dst": {"url": dst.url, "username": "writer", "password": USERS["writer"]},
    }
    cfg = write(tmp_path / "config.yaml", regs, [rule("first", "1s")])
    d = daemons(cfg)
    d.wait_ready()
    token = issuer.seed_token("team/app")
    wait_until(lambda: manifest_raw(dst.url, "team/app", "v1", token=token), 15, "v1 copied")
    # A registry added (so the daemon opens a new syncer) and the rule renamed.
    regs["spare"] = {"url": "http://127.0.0.1:9"}
    tokens_before = len(issuer.requests)
    marks = (src.log_mark(), dst.log_mark())
    write(cfg, regs, [rule("renamed", "1s")])
    d.signal(signal.SIGHUP)
    wait_until(lambda: reloaded(d, 1), 15, "the reload")
    v2 = image("keep-2")
    push(src.url, "team/app", "v2", v2, token=issuer.seed_token("team/app"))
    wait_until(
        lambda: manifest_raw(dst.url, "team/app", "v2", token=token) == v2.raw, 15, "v2 copied"
    )
    assert d.metric("syncd_config_reloads_total", result="success") == 1
    # The same sessions and tokens: no handshake again, no token asked again.
    assert src.counts(marks[0], agent="syncd/")["ping"] == 0
    assert dst.counts(marks[1], agent="syncd/")["ping"] == 0
    assert len(issuer.requests) == tokens_before
    assert d.stop() == 0


@pytest.fixture
def slow() -> Iterator[list[FaultProxy]]:
    made: list[FaultProxy] = []
    yield made
    for p in made:
        p.close()


def test_a_copy_under_way_is_not_repeated_by_the_new_config(
    source: Registry,
    target: Registry,
    daemons: DaemonFactory,
    tmp_path: Path,
    slow: list[FaultProxy],
) -> None:
    big = image("reload-big", layers=1, size=24 * MB)
    push(source.url, "team/app", "v1", big)
    # Reads from the source are slowed so the copy is still under way at the reload.
    proxy = FaultProxy(source.port, latency=0.01)
    slow.append(proxy)
    regs: dict[str, Any] = {"src": {"url": proxy.url}, "dst": {"url": target.url}}
    cfg = write(tmp_path / "config.yaml", regs, [rule("old", "1h")])
    mark = target.log_mark()
    d = daemons(cfg)
    d.wait_ready()
    wait_until(lambda: target.counts(mark)["upload_post"] >= 1, 20, "the copy to start")
    regs["spare"] = {"url": "http://127.0.0.1:9"}
    write(cfg, regs, [rule("new", "1h")])
    d.signal(signal.SIGHUP)
    wait_until(lambda: reloaded(d, 1), 20, "the reload")
    wait_until(
        lambda: (
            {e.get("rule") for e in d.logs() if e.get("event") == "rule_pass"} >= {"old", "new"}
        ),
        60,
        "both passes",
    )
    assert manifest_raw(target.url, "team/app", "v1") == big.raw
    counts = target.counts(mark, agent="syncd/")
    # One copy: each blob uploaded once, the tag pushed once.
    assert counts["upload_put"] == len(big.blobs), counts
    assert counts["manifest_put"] == 1, counts
    new_pass = [e for e in d.logs() if e.get("event") == "rule_pass" and e["rule"] == "new"]
    assert new_pass[0]["failed"] == 0
    assert d.stop() == 0
