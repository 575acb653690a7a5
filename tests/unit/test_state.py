"""The state store on its own: keys, both backends, migrations, damage, kills, sharing."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from syncd.config.schema import RegistryConfig
from syncd.endpoint import Endpoint, registry_of
from syncd.registry.pool import ClientPool
from syncd.state import MemoryStore, StateStore, TagRecord, registry_key
from syncd.state_sqlite import (
    SCHEMA_VERSION,
    SqliteStore,
    default_state_path,
    open_store,
)


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("http://127.0.0.1:5000", "127.0.0.1:5000"),
        ("https://Registry.Example.COM:443/", "registry.example.com"),
        ("http://registry.example.com:80", "registry.example.com"),
        ("https://registry.example.com", "registry.example.com"),
        ("http://registry.example.com:443", "registry.example.com:443"),
        ("registry.example.com:5000", "registry.example.com:5000"),
        ("Registry.Example.com", "registry.example.com"),
        ("http://[::1]:5000", "[::1]:5000"),
        ("oci:/srv/mirror", "oci:/srv/mirror"),
    ],
)
def test_registry_key_normalises_the_address(url: str, key: str) -> None:
    assert registry_key(url) == key


@pytest.mark.parametrize(
    ("env", "path"),
    [
        ({"STATE_DIRECTORY": "/var/lib/syncd", "HOME": "/h"}, "/var/lib/syncd/state.db"),
        ({"STATE_DIRECTORY": "/a:/b"}, "/a/state.db"),
        ({"XDG_STATE_HOME": "/x", "HOME": "/h"}, "/x/syncd/state.db"),
        ({"HOME": "/h"}, "/h/.local/state/syncd/state.db"),
        # Relative XDG values are to be ignored (XDG base directory spec).
        ({"XDG_STATE_HOME": "rel", "HOME": "/h"}, "/h/.local/state/syncd/state.db"),
    ],
)
def test_default_path(env: dict[str, str], path: str) -> None:
    assert default_state_path(env) == path


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    s: StateStore = (
        MemoryStore()
        if request.param == "memory"
        else SqliteStore(str(tmp_path / "s.db"), scope="/etc/a.yaml")
    )
    yield s
    s.close()


def test_tags_are_kept_per_rule_registry_and_repository(store: StateStore) -> None:
    store.tag_put("r", "reg:1", "app", "v1", "sha256:a", at=1.0, trusted_until=50.0)
    store.tag_put("r", "reg:1", "app", "v2", "sha256:b", at=2.0)
    store.tag_put("other", "reg:1", "app", "v3", "sha256:c", at=3.0)
    store.tag_put("r", "reg:2", "app", "v4", "sha256:d", at=4.0)
    assert store.tag_get("r", "reg:1", "app", "v1") == TagRecord("sha256:a", 1.0, 50.0)
    assert store.tag_get("r", "reg:1", "app", "v3") is None
    assert set(store.tag_list("r", "reg:1", "app")) == {"v1", "v2"}
    store.tag_distrust("r", "reg:1", "app", "v1")
    assert store.tag_get("r", "reg:1", "app", "v1") == TagRecord("sha256:a", 1.0, 0.0)
    store.tag_delete("r", "reg:1", "app", "v2")
    assert set(store.tag_list("r", "reg:1", "app")) == {"v1"}


def test_blobs_images_facts_and_reports(store: StateStore) -> None:
    store.blob_put("reg", "sha256:x", "a")
    store.blob_put("reg", "sha256:y", "b")
    assert store.blob_where("reg", "sha256:x") == "a"
    assert store.blob_where("other", "sha256:x") is None
    store.blob_delete("reg", "sha256:x")
    assert store.blob_where("reg", "sha256:x") is None
    store.repository_forget("reg", "b")
    assert store.blob_where("reg", "sha256:y") is None
    store.image_put("reg", "a", "sha256:1")
    store.image_put("reg", "b", "sha256:2")
    assert store.image_list("reg", 10)[0] in {("b", "sha256:2"), ("a", "sha256:1")}
    assert sorted(store.image_list("reg", 10)) == [("a", "sha256:1"), ("b", "sha256:2")]
    store.sizes_put("sha256:img", {"sha256:l1": 10, "sha256:l2": 20})
    assert store.sizes_get("sha256:img") == {"sha256:l1": 10, "sha256:l2": 20}
    assert store.sizes_get("sha256:other") is None
    store.fact_put("reg", "referrers_api", "no", at=5.0)
    assert store.fact_get("reg", "referrers_api") == ("no", 5.0)
    store.save_report("app", {"name": "app", "targets": []})
    assert store.reports() == {"app": {"name": "app", "targets": []}}


def test_facts_outlive_the_process_and_reports_keep_to_their_config(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    a = SqliteStore(path, scope="/etc/a.yaml")
    a.tag_put("r", "reg", "app", "v1", "sha256:a", at=1.0)
    a.blob_put("reg", "sha256:x", "app")
    a.save_report("r", {"from": "a"})
    a.close()
    b = SqliteStore(path, scope="/etc/b.yaml")
    assert b.tag_get("r", "reg", "app", "v1") == TagRecord("sha256:a", 1.0, 0.0)
    assert b.blob_where("reg", "sha256:x") == "app"
    assert b.reports() == {}, "another config's reports are not this one's"
    b.close()
    assert SqliteStore(path, scope="/etc/a.yaml").reports() == {"r": {"from": "a"}}


def test_schema_is_versioned_and_wal(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    SqliteStore(path).close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_a_newer_schema_is_left_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "s.db")
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    store = open_store(path)
    assert isinstance(store, MemoryStore)
    assert "newer than this syncd" in caplog.text
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    db.close()


def test_a_damaged_file_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not a database" * 100)
    store = open_store(str(path))
    assert isinstance(store, SqliteStore)
    store.tag_put("r", "reg", "app", "v1", "sha256:a", at=1.0)
    store.close()
    assert [p.name for p in tmp_path.glob("s.db.damaged-*")]
    assert "damaged" in caplog.text


def test_an_unusable_path_means_memory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert isinstance(open_store(str(tmp_path / "file" / "s.db")), MemoryStore)
    assert isinstance(open_store(None), MemoryStore)


_WRITER = """
import sys, time
from syncd.state_sqlite import SqliteStore
s = SqliteStore(sys.argv[1])
i = 0
print("ready", flush=True)
while True:
    for j in range(500):
        s.tag_put("r", "reg", "app", f"{sys.argv[2]}-{i}-{j}", "sha256:" + "a" * 64, at=time.time())
    s.flush()
    i += 1
"""


def _writer(path: Path, name: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), name],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _wait_for(cond: Callable[[], bool], limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)  # sleep-ok: polling another process's progress


def _count(path: Path) -> int:
    db = sqlite3.connect(path, timeout=30)
    try:
        return int(db.execute("SELECT count(*) FROM tags").fetchone()[0])
    finally:
        db.close()


def _writers(path: Path) -> set[str]:
    db = sqlite3.connect(path, timeout=30)
    try:
        return {r[0] for r in db.execute("SELECT DISTINCT substr(tag, 1, 1) FROM tags")}
    finally:
        db.close()


def test_two_writers_share_a_file_and_a_kill_leaves_it_whole(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    a, b = _writer(path, "a"), _writer(path, "b")
    try:
        _wait_for(lambda: _count(path) >= 5_000 and _writers(path) == {"a", "b"})
        os.kill(a.pid, signal.SIGKILL)  # mid-transaction, most likely
        os.kill(b.pid, signal.SIGKILL)
    finally:
        for p in (a, b):
            p.kill()
            p.wait(10)
            assert p.stdout is not None
            p.stdout.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    n = db.execute("SELECT count(*) FROM tags").fetchone()[0]
    writers = {r[0] for r in db.execute("SELECT substr(tag, 1, 1) FROM tags")}
    db.close()
    # Whole transactions only: every batch of 500 is there completely or not at all.
    assert n % 500 == 0 and n >= 5_000
    assert writers == {"a", "b"}
    s = SqliteStore(str(path))
    s.tag_put("r", "reg", "app", "after", "sha256:b", at=1.0)
    s.close()
    assert _count(path) == n + 1


_OPENER = """
import sys
from syncd.state_sqlite import open_store
print("ready", flush=True)
sys.stdin.readline()
s = open_store(sys.argv[1])
s.tag_put("r", "reg", "app", sys.argv[2], "sha256:" + "a" * 64, at=1.0)
s.close()
print(type(s).__name__, flush=True)
"""


def test_processes_creating_one_file_at_once_all_keep_it(tmp_path: Path) -> None:
    # Switching a new file to WAL takes a lock SQLite does not wait for: without a retry,
    # one of several CI jobs starting together kept its facts in memory and lost them.
    for round_ in range(6):
        path = tmp_path / f"s{round_}.db"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _OPENER, str(path), f"p{i}"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(4)
        ]
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "ready"
        for p in procs:  # all released together
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [p.communicate(timeout=60) for p in procs]
        assert [o.strip() for o, _ in outs] == ["SqliteStore"] * 4, [e for _, e in outs]
        assert _count(path) == 4


def test_an_older_file_is_migrated_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import syncd.state_sqlite as mod

    path = str(tmp_path / "s.db")
    old = SqliteStore(path)
    old.tag_put("r", "reg", "app", "v1", "sha256:a", at=1.0)
    old.close()
    later = (*mod.MIGRATIONS, ("CREATE TABLE later (x TEXT)",))
    monkeypatch.setattr(mod, "MIGRATIONS", later)
    monkeypatch.setattr(mod, "SCHEMA_VERSION", len(later))
    new = mod.SqliteStore(path)
    assert new.tag_get("r", "reg", "app", "v1") == TagRecord("sha256:a", 1.0, 0.0)
    new.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(later)
    assert db.execute("SELECT count(*) FROM later").fetchone()[0] == 0
    db.close()


@pytest.mark.parametrize(
    "url",
    [
        "reg.example.com",
        "https://Reg.Example.com:443/",
        "http://127.0.0.1:5000",
        "https://[::1]:8443",
        "docker.io",
    ],
)
def test_facts_stay_filed_under_the_registry_address(url: str) -> None:
    """The store key of an endpoint (from its client's origin) is the key earlier
    versions filed facts under (from the transport's base url): stored files stay valid."""
    reg = RegistryConfig(name="r", url=url)
    client = ClientPool({"r": reg}).client("r")
    assert registry_of(Endpoint(client, "team/app")) == registry_key(reg.base_url)


def test_a_layout_is_filed_under_its_kind_and_path(tmp_path: Path) -> None:
    url = f"oci:{tmp_path}/mirror"  # as the config loader gives it: an absolute path
    client = ClientPool({"l": RegistryConfig(name="l", url=url)}).client("l")
    assert registry_of(Endpoint(client, "team/app")) == registry_key(url)
