"""The embedded state store: one SQLite file (standard library), shared by processes.

* WAL journal: readers never wait for a writer, and a process killed at any moment
  (SIGKILL included) leaves the last committed transaction; the half-done one is rolled
  back when the file is next opened (sqlite.org/wal.html, "atomic commit").
* Several processes may use one file at once (CI jobs running ``syncd once`` side by
  side): a writer waits for another's lock up to ``BUSY_TIMEOUT`` seconds.
* The schema is versioned in SQLite's ``user_version`` and brought up to date by the
  ordered ``MIGRATIONS`` in one exclusive transaction; a file from a newer syncd is left
  alone (the process runs with a store in memory and says so).
* Writes of tag and blob facts are buffered and committed in batches (a pass over 5,000
  tags is a few transactions, not 5,000); losing the buffer to a kill only costs requests.
  Distrusting or deleting a tag is committed at once.
* A failing store never fails a pass: the error is logged once and the fact dropped.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

from syncd.config.schema import Config
from syncd.state import MemoryStore, StateStore, TagRecord

log = logging.getLogger(__name__)

BUSY_TIMEOUT = 30.0
# Buffered facts committed in one transaction once this many are waiting.
BATCH = 2_000

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: the first schema
    (
        "CREATE TABLE tags (registry TEXT NOT NULL, repository TEXT NOT NULL,"
        " rule TEXT NOT NULL, tag TEXT NOT NULL, digest TEXT NOT NULL, at REAL NOT NULL,"
        " trusted_until REAL NOT NULL DEFAULT 0,"
        " PRIMARY KEY (registry, repository, rule, tag)) WITHOUT ROWID",
        "CREATE TABLE blobs (registry TEXT NOT NULL, digest TEXT NOT NULL,"
        " repository TEXT NOT NULL, at REAL NOT NULL,"
        " PRIMARY KEY (registry, digest)) WITHOUT ROWID",
        "CREATE TABLE images (registry TEXT NOT NULL, repository TEXT NOT NULL,"
        " digest TEXT NOT NULL, at REAL NOT NULL, noted INTEGER NOT NULL DEFAULT 0,"
        " PRIMARY KEY (registry, repository)) WITHOUT ROWID",
        "CREATE INDEX images_by_time ON images (registry, at)",
        "CREATE INDEX images_by_digest ON images (registry, digest, noted)",
        "CREATE TABLE sizes (digest TEXT PRIMARY KEY NOT NULL, blobs TEXT NOT NULL,"
        " at REAL NOT NULL) WITHOUT ROWID",
        "CREATE TABLE facts (registry TEXT NOT NULL, name TEXT NOT NULL,"
        " value TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (registry, name)) WITHOUT ROWID",
        "CREATE TABLE reports (scope TEXT NOT NULL, rule TEXT NOT NULL,"
        " report TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (scope, rule)) WITHOUT ROWID",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


class StoreVersionError(Exception):
    """The file was written by a newer syncd (a schema this one does not know)."""


def default_state_path(environ: Mapping[str, str]) -> str:
    """``$STATE_DIRECTORY/state.db`` under systemd (``StateDirectory=``), else
    ``$XDG_STATE_HOME/syncd/state.db`` (XDG base directory spec: ``~/.local/state``)."""
    state_dir = environ.get("STATE_DIRECTORY", "")
    if state_dir:
        # systemd passes a colon-separated list when several directories are configured.
        return os.path.join(state_dir.split(":")[0], "state.db")
    xdg = environ.get("XDG_STATE_HOME", "")
    if not xdg or not os.path.isabs(xdg):
        home = environ.get("HOME") or os.path.expanduser("~")
        xdg = os.path.join(home, ".local", "state")
    return os.path.join(xdg, "syncd", "state.db")


def open_store(path: str | None, *, scope: str = "") -> StateStore:
    """The store at ``path`` (None: in memory). ``scope`` keeps the reports of one config
    apart from another's in a shared file.

    A file that cannot be used is no reason to stop syncing: a damaged one is moved aside
    and started afresh, anything else (no permission, a newer schema) is logged and the
    process runs with a store in memory.
    """
    if path is None:
        return MemoryStore()
    try:
        return SqliteStore(path, scope=scope)
    except sqlite3.DatabaseError as e:
        if isinstance(e, sqlite3.OperationalError) or not os.path.exists(path):
            return _in_memory(path, e)
        aside = f"{path}.damaged-{int(time.time())}"
        log.error(
            "state store %s is damaged (%s): moved to %s, starting afresh",
            path,
            e,
            aside,
            extra={"event": "state_store", "path": path},
        )
        try:
            os.replace(path, aside)
            for suffix in ("-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.replace(path + suffix, aside + suffix)
            return SqliteStore(path, scope=scope)
        except (OSError, sqlite3.Error) as again:
            return _in_memory(path, again)
    except (OSError, StoreVersionError) as e:
        return _in_memory(path, e)


def open_state(config: Config) -> StateStore:
    """The state store of ``config`` (``state.path``; None: in memory)."""
    # Reports are filed per config file, so configs sharing a store keep their own.
    return open_store(config.state.path, scope=os.path.abspath(config.path))


def _in_memory(path: str, err: BaseException) -> StateStore:
    log.error(
        "state store %s cannot be used (%s): keeping state in memory for this process",
        path,
        err,
        extra={"event": "state_store", "path": path},
    )
    return MemoryStore()


_TagKey = tuple[str, str, str, str]  # registry, repository, rule, tag


class SqliteStore:
    """``StateStore`` in one SQLite file."""

    def __init__(self, path: str, *, scope: str = "") -> None:
        self.path = path
        self.scope = scope
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, mode=0o700, exist_ok=True)
        # isolation_level=None: transactions are begun explicitly, so none is left open
        # (holding a lock other processes wait on) between calls.
        self._db = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
        try:
            self._use_wal()
            # NORMAL in WAL mode: a commit survives a process kill, may be lost only to a
            # power cut; a cache can afford that, and commits then cost no fsync.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except BaseException:
            self._db.close()
            raise
        self._tags: dict[_TagKey, TagRecord | None] = {}  # buffered; None: delete
        self._blobs: dict[tuple[str, str], tuple[str, float]] = {}
        self._images: dict[tuple[str, str], tuple[str, float, bool]] = {}
        self._sizes: dict[str, dict[str, int]] = {}
        self._failed_once = False

    def _use_wal(self) -> None:
        """Switch a new file to WAL. The switch takes an exclusive lock and SQLite does not
        call the busy handler for it: a process creating the file while another does gets
        "database is locked" at once (sqlite.org/wal.html, "Activating And Configuring WAL
        Mode"). So it is retried here, within the same ``BUSY_TIMEOUT``."""
        deadline = time.monotonic() + BUSY_TIMEOUT
        pause = 0.005
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                if time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)  # sleep-ok: backoff on another process's lock
            pause = min(pause * 2, 0.2)

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        # IMMEDIATE: two processes opening a new file at once migrate it one after the
        # other; the second then finds the version already current.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreVersionError(
                    f"schema version {version} is newer than this syncd's {SCHEMA_VERSION}"
                )
            for number in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[number]:
                    self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _rows(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        """The rows of a query; none when the store fails (it is only a cache)."""
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as e:
            self._failed("a read", e)
            return []

    @contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """One write transaction; a failure is logged and the facts dropped."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            yield
            self._db.execute("COMMIT")
        except sqlite3.Error as e:
            if self._db.in_transaction:
                with suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            self._failed(what, e)

    def _failed(self, what: str, e: sqlite3.Error) -> None:
        # Once as a warning: a store that fails one call usually fails the next ones too.
        level = logging.DEBUG if self._failed_once else logging.WARNING
        self._failed_once = True
        log.log(
            level,
            "state store %s: %s failed (%s); going on without it",
            self.path,
            what,
            e,
            extra={"event": "state_store", "path": self.path},
        )

    # -- tags ----------------------------------------------------------------------------
    def tag_get(self, rule: str, registry: str, repository: str, tag: str) -> TagRecord | None:
        key = (registry, repository, rule, tag)
        if key in self._tags:
            return self._tags[key]
        rows = self._rows(
            "SELECT digest, at, trusted_until FROM tags"
            " WHERE registry=? AND repository=? AND rule=? AND tag=?",
            key,
        )
        return TagRecord(*rows[0]) if rows else None

    def tag_list(self, rule: str, registry: str, repository: str) -> dict[str, TagRecord]:
        self.flush()
        rows = self._rows(
            "SELECT tag, digest, at, trusted_until FROM tags"
            " WHERE registry=? AND repository=? AND rule=?",
            (registry, repository, rule),
        )
        return {tag: TagRecord(d, at, until) for tag, d, at, until in rows}

    def tag_put(
        self,
        rule: str,
        registry: str,
        repository: str,
        tag: str,
        digest: str,
        *,
        at: float,
        trusted_until: float = 0.0,
    ) -> None:
        self._tags[(registry, repository, rule, tag)] = TagRecord(digest, at, trusted_until)
        self._maybe_flush()

    def tag_distrust(self, rule: str, registry: str, repository: str, tag: str) -> None:
        old = self.tag_get(rule, registry, repository, tag)
        if old is not None and old.trusted_until:
            self._tags[(registry, repository, rule, tag)] = TagRecord(old.digest, old.at, 0.0)
            self.flush()

    def tag_delete(self, rule: str, registry: str, repository: str, tag: str) -> None:
        self._tags[(registry, repository, rule, tag)] = None
        self.flush()

    # -- blobs and images ------------------------------------------------------------------
    def blob_where(self, registry: str, digest: str) -> str | None:
        buffered = self._blobs.get((registry, digest))
        if buffered is not None:
            return buffered[0] or None
        rows = self._rows(
            "SELECT repository FROM blobs WHERE registry=? AND digest=?", (registry, digest)
        )
        return str(rows[0][0]) if rows else None

    def blob_put(self, registry: str, digest: str, repository: str) -> None:
        self._blobs[(registry, digest)] = (repository, time.time())
        self._maybe_flush()

    def blob_delete(self, registry: str, digest: str) -> None:
        self._blobs[(registry, digest)] = ("", 0.0)
        self._maybe_flush()

    def repository_forget(self, registry: str, repository: str) -> None:
        self.flush()
        with self._writing("a delete"):
            self._db.execute(
                "DELETE FROM blobs WHERE registry=? AND repository=?", (registry, repository)
            )

    def image_put(
        self, registry: str, repository: str, digest: str, *, noted: bool = False
    ) -> None:
        old = self._images.get((registry, repository))
        noted = noted or (old is not None and old[0] == digest and old[2])
        self._images[(registry, repository)] = (digest, time.time(), noted)
        self._maybe_flush()

    def image_list(self, registry: str, limit: int) -> list[tuple[str, str]]:
        self.flush()
        rows = self._rows(
            "SELECT repository, digest FROM images AS i WHERE registry=? AND NOT EXISTS"
            " (SELECT 1 FROM images WHERE registry=i.registry AND digest=i.digest AND noted=1)"
            " ORDER BY at DESC LIMIT ?",
            (registry, limit),
        )
        return [(str(r), str(d)) for r, d in rows]

    def sizes_get(self, digest: str) -> dict[str, int] | None:
        if digest in self._sizes:
            return self._sizes[digest]
        rows = self._rows("SELECT blobs FROM sizes WHERE digest=?", (digest,))
        try:
            found = json.loads(rows[0][0]) if rows else None
        except ValueError:
            return None
        return found if isinstance(found, dict) else None

    def sizes_put(self, digest: str, sizes: dict[str, int]) -> None:
        self._sizes[digest] = sizes
        self._maybe_flush()

    # -- facts and reports -------------------------------------------------------------------
    def fact_get(self, registry: str, name: str) -> tuple[str, float] | None:
        rows = self._rows(
            "SELECT value, at FROM facts WHERE registry=? AND name=?", (registry, name)
        )
        return (str(rows[0][0]), float(rows[0][1])) if rows else None

    def fact_put(self, registry: str, name: str, value: str, *, at: float) -> None:
        with self._writing("a write"):
            self._db.execute(
                "INSERT OR REPLACE INTO facts VALUES (?, ?, ?, ?)", (registry, name, value, at)
            )

    def save_report(self, rule: str, report: dict[str, Any]) -> None:
        text = json.dumps(report, sort_keys=True)
        with self._writing("saving a report"):
            self._db.execute(
                "INSERT OR REPLACE INTO reports VALUES (?, ?, ?, ?)",
                (self.scope, rule, text, time.time()),
            )

    def reports(self) -> dict[str, dict[str, Any]]:
        rows = self._rows(
            "SELECT rule, report FROM reports WHERE scope=? ORDER BY rule", (self.scope,)
        )
        out: dict[str, dict[str, Any]] = {}
        for rule, text in rows:
            try:
                out[str(rule)] = json.loads(text)
            except ValueError:
                continue  # a damaged report is as good as none
        return out

    # -- writing -------------------------------------------------------------------------------
    def _maybe_flush(self) -> None:
        if len(self._tags) + len(self._blobs) + len(self._images) + len(self._sizes) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if not (self._tags or self._blobs or self._images or self._sizes):
            return
        tags, blobs, images, sizes = self._tags, self._blobs, self._images, self._sizes
        self._tags, self._blobs, self._images, self._sizes = {}, {}, {}, {}
        with self._writing("a write"):
            puts = [(*k, r.digest, r.at, r.trusted_until) for k, r in tags.items() if r]
            gone = [k for k, r in tags.items() if r is None]
            self._db.executemany("INSERT OR REPLACE INTO tags VALUES (?,?,?,?,?,?,?)", puts)
            self._db.executemany(
                "DELETE FROM tags WHERE registry=? AND repository=? AND rule=? AND tag=?", gone
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO blobs VALUES (?,?,?,?)",
                [(*k, repo, at) for k, (repo, at) in blobs.items() if repo],
            )
            self._db.executemany(
                "DELETE FROM blobs WHERE registry=? AND digest=?",
                [k for k, (repo, _) in blobs.items() if not repo],
            )
            # A repository stays "noted" while its digest stays the same.
            self._db.executemany(
                "INSERT INTO images VALUES (?,?,?,?,?) ON CONFLICT (registry, repository) DO"
                " UPDATE SET at=excluded.at, noted=CASE WHEN digest=excluded.digest THEN"
                " max(noted, excluded.noted) ELSE excluded.noted END, digest=excluded.digest",
                [(*k, d, at, int(noted)) for k, (d, at, noted) in images.items()],
            )
            now = time.time()
            self._db.executemany(
                "INSERT OR REPLACE INTO sizes VALUES (?,?,?)",
                [(d, json.dumps(b, sort_keys=True), now) for d, b in sizes.items()],
            )

    def close(self) -> None:
        self.flush()
        with suppress(sqlite3.Error):
            self._db.close()
