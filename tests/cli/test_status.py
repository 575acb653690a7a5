"""``syncd status`` without a daemon: the stored-reports fallback and the text rendering."""

from __future__ import annotations

import pytest

from syncd.status import StatusUnavailableError, format_status, read_status, status_url
from tests.cli.test_cli import run
from tests.helpers.registry import free_port

ENTRY = {
    "name": "app-release",
    "started": "2026-12-06T10:00:00Z",
    "finished": "2026-12-06T10:00:04Z",
    "seconds": 4.2,
    "targets": [
        {
            "target": "prod",
            "copied": 3,
            "up_to_date": 57,
            "failed": 1,
            "deleted": 2,
            "bytes": 1071243,
        }
    ],
    "failures": [
        {
            "source": "dev/team-a/app:v2",
            "target": "prod/team-a/app:v2",
            "digest": "sha256:" + "a" * 64,
            "reason": "overwrite_refused",
            "message": "prod/team-a/app:v2 points elsewhere",
        }
    ],
}


@pytest.mark.parametrize(
    ("listen", "url"),
    [
        ("127.0.0.1:9090", "http://127.0.0.1:9090/status"),
        (":9090", "http://127.0.0.1:9090/status"),
        ("0.0.0.0:9090", "http://127.0.0.1:9090/status"),
        ("[::]:9090", "http://[::1]:9090/status"),
        ("[::1]:8080", "http://[::1]:8080/status"),
    ],
)
def test_status_url(listen: str, url: str) -> None:
    assert status_url(listen) == url


def test_no_daemon_falls_back_to_stored_reports() -> None:
    listen = f"127.0.0.1:{free_port()}"
    with pytest.raises(StatusUnavailableError, match="no daemon answered"):
        read_status(listen, timeout=5)
    with pytest.raises(StatusUnavailableError, match="no daemon answered"):
        read_status(listen, stored={}, timeout=5)
    doc = read_status(listen, stored={"app-release": ENTRY}, timeout=5)
    assert doc["version"] == 1 and doc["rules"] == [ENTRY]
    assert doc["from"].startswith("state store (no daemon answered")
    text = format_status(doc).splitlines()
    assert text[0].startswith("(from the state store")
    assert (
        text[1] == "rule app-release: 2026-12-06T10:00:00Z .. 2026-12-06T10:00:04Z (4.2s), 1 failed"
    )
    assert text[3].split() == ["prod", "3", "57", "1", "2", "1.0", "MiB"]
    assert text[4] == (
        "  failed: dev/team-a/app:v2 -> prod/team-a/app:v2: overwrite_refused:"
        " prod/team-a/app:v2 points elsewhere"
    )


def test_status_without_a_daemon_exits_1() -> None:
    r = run("status", "--listen", f"127.0.0.1:{free_port()}")
    assert r.returncode == 1
    assert r.stderr.startswith("syncd: no run report: no daemon answered at http://127.0.0.1:")
