"""``syncd status``: the latest run report of every rule, read from a running daemon.

The daemon serves it at ``GET /status`` (``syncd.server``). ``read_status`` takes the
reports a state store keeps (rule name -> report entry) as the fallback for when no daemon
answers; ``format_status`` renders a report for a person.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from syncd.report import REPORT_VERSION, run_report

DEFAULT_TIMEOUT = 10.0


class StatusUnavailableError(Exception):
    """No report could be read: no daemon answered and nothing was stored."""


def status_url(listen: str) -> str:
    """``http://HOST:PORT/status`` for a ``server.listen``-style address.

    An address that listens on every interface (``:9090``, ``0.0.0.0:9090``, ``[::]:9090``)
    is asked on the loopback address of its family.
    """
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"invalid listen address {listen!r}: expected HOST:PORT")
    if host in ("", "0.0.0.0"):  # noqa: S104 (reading the address, not binding it)
        host = "127.0.0.1"
    elif host in ("[::]", "::"):
        host = "[::1]"
    return f"http://{host}:{port}/status"


def fetch_status(listen: str, *, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """The report a daemon serves, or ``StatusUnavailableError`` saying why not."""
    url = status_url(listen)
    # Straight to the daemon: a proxy from the environment has no business on this hop.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            body = resp.read(16 * 1024 * 1024)
    except urllib.error.HTTPError as e:
        raise StatusUnavailableError(f"{url}: HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise StatusUnavailableError(f"no daemon answered at {url}: {reason}") from None
    try:
        doc = json.loads(body)
    except ValueError:
        raise StatusUnavailableError(f"{url}: the answer is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("rules"), list):
        raise StatusUnavailableError(f"{url}: the answer is not a run report")
    return doc


def read_status(
    listen: str,
    *,
    stored: Mapping[str, Mapping[str, Any]] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, Any]:
    """The daemon's report, else one made of ``stored`` reports (rule name -> entry).

    Raises ``StatusUnavailableError`` when neither gives a rule with a report.
    """
    try:
        doc = fetch_status(listen, timeout=timeout)
    except StatusUnavailableError as e:
        if not stored:
            raise
        doc = run_report(stored.values())
        doc["from"] = f"state store ({e})"
    if not doc["rules"]:
        raise StatusUnavailableError("no rule has finished a pass yet")
    return doc


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def format_status(doc: Mapping[str, Any]) -> str:
    """A report as a person reads it: per rule a small table of targets, then failures."""
    lines: list[str] = []
    if doc.get("version") != REPORT_VERSION:
        lines.append(f"(report version {doc.get('version')}, this syncd reads {REPORT_VERSION})")
    if doc.get("from"):
        lines.append(f"(from the {doc['from']})")
    for rule in doc["rules"]:
        failures = rule.get("failures", [])
        head = f"rule {rule['name']}: {rule['started']} .. {rule['finished']}"
        if "seconds" in rule:
            head += f" ({rule['seconds']:.1f}s)"
        head += f", {len(failures)} failed" if failures else ", ok"
        lines.append(head)
        if rule.get("repositories"):
            lines.append(f"  (webhook pass of {', '.join(rule['repositories'])})")
        lines.append(
            f"  {'target':<16} {'copied':>7} {'up to date':>10} {'failed':>7} {'deleted':>8}"
            f"  {'bytes':>10}"
        )
        for t in rule.get("targets", []):
            lines.append(
                f"  {t['target']:<16} {t['copied']:>7} {t['up_to_date']:>10} {t['failed']:>7}"
                f" {t.get('deleted', 0):>8}  {_human(t.get('bytes', 0)):>10}"
            )
        for f in failures:
            arrow = f" -> {f['target']}" if f.get("target") else ""
            lines.append(f"  failed: {f['source']}{arrow}: {f['reason']}: {f['message']}")
    return "\n".join(lines)
