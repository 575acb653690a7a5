"""Rendezvous hashing, the local ownership, and the cluster section of the config."""

from __future__ import annotations

import socket
import textwrap
from collections import Counter

import pytest

from syncd.cluster.rendezvous import assign, owner, unit_key
from syncd.config.load import load_config_text
from syncd.errors import ConfigError
from syncd.ownership import LOCAL

UNITS = [unit_key("mirror", f"team/app{i}") for i in range(3000)]


def test_every_unit_has_one_owner_and_the_order_of_members_does_not_matter() -> None:
    members = ["rep0", "rep1", "rep2"]
    for u in UNITS[:200]:
        assert owner(u, members) == owner(u, list(reversed(members))) in members
    assert owner(UNITS[0], []) is None


def test_the_shares_are_even() -> None:
    shares = Counter(owner(u, ["a", "b", "c"]) for u in UNITS)
    for n in shares.values():
        assert abs(n - 1000) < 120, shares


def test_a_member_leaving_moves_only_its_units() -> None:
    before = {u: owner(u, ["a", "b", "c"]) for u in UNITS}
    after = {u: owner(u, ["a", "b"]) for u in UNITS}
    moved = [u for u in UNITS if before[u] != after[u]]
    assert moved and all(before[u] == "c" for u in moved)
    assert len(moved) == sum(1 for u in UNITS if before[u] == "c")


def test_a_member_joining_takes_about_its_share_and_only_from_others() -> None:
    before = {u: owner(u, ["a", "b", "c"]) for u in UNITS}
    after = {u: owner(u, ["a", "b", "c", "d"]) for u in UNITS}
    moved = [u for u in UNITS if before[u] != after[u]]
    assert all(after[u] == "d" for u in moved)
    assert abs(len(moved) - len(UNITS) / 4) < 150


def test_assign_lists_every_member() -> None:
    out = assign(UNITS[:10], ["a", "b", "z"])
    assert set(out) == {"a", "b", "z"}
    assert sorted(u for us in out.values() for u in us) == sorted(UNITS[:10])


async def test_local_ownership_owns_everything() -> None:
    assert await LOCAL.select("r", ["b", "a"]) == ["b", "a"]
    assert LOCAL.may_write()


BASE = """\
registries:
  a: {url: http://127.0.0.1:5000}
  b: {url: http://127.0.0.1:5001}
rules:
  - {name: r, source: a, targets: [b], repositories: [x]}
"""


def load(cluster: str) -> object:
    return load_config_text(BASE + textwrap.dedent(cluster), filename="c.yaml", environ={})


def test_cluster_defaults() -> None:
    config = load("cluster:\n  etcd: {endpoints: [http://127.0.0.1:2379]}\n")
    c = config.cluster  # type: ignore[attr-defined]
    assert c.name == socket.gethostname()
    assert c.prefix == "/syncd/"
    assert c.lease_ttl == 10.0
    assert c.expected_members is None
    assert c.etcd.endpoints == ("http://127.0.0.1:2379",)
    assert load("").cluster is None  # type: ignore[attr-defined]


def test_cluster_values(tmp_path: object) -> None:
    config = load(
        """\
        cluster:
          etcd:
            endpoints: [http://127.0.0.1:2379, http://127.0.0.1:2381/]
            username: syncd
            password: s3cret
          name: syncd-1
          prefix: /teams/a/syncd/
          lease_ttl: 2.5s
          expected_members: 3
        """
    )
    c = config.cluster  # type: ignore[attr-defined]
    assert c.etcd.endpoints == ("http://127.0.0.1:2379", "http://127.0.0.1:2381")
    assert c.etcd.password.reveal() == "s3cret"
    assert "s3cret" not in repr(c)
    assert (c.name, c.prefix, c.lease_ttl, c.expected_members) == (
        "syncd-1",
        "/teams/a/syncd/",
        3.0,  # etcd grants whole seconds: rounded up
        3,
    )


@pytest.mark.parametrize(
    ("cluster", "where", "text"),
    [
        ("cluster: {}\n", "6:10", "required key 'etcd' is missing"),
        (
            "cluster:\n  etcd: {endpoints: [127.0.0.1:2379]}\n",
            "7:22",
            "invalid etcd endpoint '127.0.0.1:2379'",
        ),
        ("cluster:\n  etcd: {endpoints: []}\n", "7:21", "must not be empty"),
        (
            "cluster:\n  etcd: {endpoints: [http://h:1]}\n  lease_ttl: 1s\n",
            "8:14",
            "lease_ttl must be at least 2s",
        ),
        (
            "cluster:\n  etcd: {endpoints: [http://h:1]}\n  prefix: syncd\n",
            "8:11",
            "invalid prefix 'syncd'",
        ),
        (
            "cluster:\n  etcd: {endpoints: [http://h:1]}\n  name: 'a b'\n",
            "8:9",
            "invalid replica name 'a b'",
        ),
        (
            "cluster:\n  etcd: {endpoints: [http://h:1], password: x}\n",
            "7:35",
            "a password needs a username",
        ),
        (
            "cluster:\n  etcd: {endpoints: [http://h:1], ca_file: /nonexistent/ca.pem}\n",
            "7:35",
            "ca_file needs https:// endpoints",
        ),
        (
            "cluster:\n  etcd: {endpoints: [https://h:1], ca_file: /nonexistent/ca.pem}\n",
            "7:45",
            "ca_file '/nonexistent/ca.pem' does not exist",
        ),
        (
            "cluster:\n  etcd: {endpoints: [http://h:1, https://h:2]}\n",
            "7:21",
            "mix of http:// and https:// endpoints",
        ),
        (
            "cluster:\n  etcd: {endpoints: [http://h:1]}\n  expected_member: 3\n",
            "8:3",
            "unknown key 'expected_member' (did you mean 'expected_members'?)",
        ),
    ],
)
def test_cluster_problems(cluster: str, where: str, text: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(cluster)
    shown = [f"{p.line}:{p.column} {p.message}" for p in e.value.problems]
    assert any(s.startswith(where) and text in s for s in shown), shown


def test_a_single_process_never_imports_the_etcd_client() -> None:
    import subprocess
    import sys

    code = (
        "import sys, syncd.cli, syncd.daemon.lifecycle, syncd.sync, syncd.server;"
        "print('aetcd' in sys.modules, 'grpc' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["False", "False"]
