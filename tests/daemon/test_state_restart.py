"""``syncd run`` restarted on its state store: the first pass costs what a steady pass does."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.daemon.conftest import DaemonFactory, DaemonProcess, wait_until
from tests.helpers.images import image, push
from tests.helpers.registry import Registry

UA = "syncd/"


def passes(d: DaemonProcess) -> float:
    return d.metric("syncd_sync_duration_seconds_count", rule="app") or 0.0


def test_a_restarted_daemon_asks_what_a_steady_pass_asks(
    tmp_path: Path, daemons: DaemonFactory, source: Registry, target: Registry
) -> None:
    for n in range(5):
        push(source.url, "dr/app", f"v{n}", image(f"dr-{n}", layers=1))
    cfg = tmp_path / "c.yaml"
    doc = {
        "registries": {"src": {"url": source.url}, "dst": {"url": target.url}},
        "defaults": {"interval": "3s", "target_recheck": "1h"},
        "rules": [{"name": "app", "source": "src", "targets": ["dst"], "repositories": ["dr/app"]}],
        "state": {"path": str(tmp_path / "state.db")},
    }
    cfg.write_text(yaml.safe_dump(doc))
    first = daemons(cfg)
    first.wait_ready()
    wait_until(lambda: passes(first) >= 1, 60, "the first pass")
    smark, tmark = source.log_mark(), target.log_mark()
    wait_until(lambda: passes(first) >= 2, 60, "a steady pass")
    steady_s, steady_t = source.counts(smark, UA), target.counts(tmark, UA)
    assert first.stop() == 0
    assert steady_t == {} and steady_s == {"tags_list": 1, "manifest_head": 5}

    smark, tmark = source.log_mark(), target.log_mark()
    again = daemons(cfg)
    again.wait_ready()
    wait_until(lambda: passes(again) >= 1, 60, "the restarted daemon's first pass")
    s, t = source.counts(smark, UA), target.counts(tmark, UA)
    assert again.stop() == 0
    # One /v2/ ping (how a new process learns the auth scheme), then the steady pass's own
    # requests: the recheck windows and the referrers-API answer came from the store.
    assert s.pop("ping", 0) == 1
    assert s == steady_s and t == {}
