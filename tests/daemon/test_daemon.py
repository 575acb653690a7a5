"""``syncd run`` as a real process against real registries."""

from __future__ import annotations

import json
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.daemon.conftest import (
    PYTHON,
    REPO,
    TOKEN,
    DaemonFactory,
    DaemonProcess,
    wait_until,
    write_config,
)
from tests.helpers.images import image, push
from tests.helpers.registry import (
    Registry,
    RegistryFactory,
    free_port,
    http,
    manifest_raw,
    tags,
)

REPO_A = "team/app"


def rule(name: str, repositories: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "source": "src",
        "targets": ["dst"],
        "repositories": repositories,
        **extra,
    }


def envelope(repository: str, tag: str, digest: str) -> bytes:
    """A distribution notification envelope, as docker-registry 2.8 posts it."""
    return json.dumps(
        {
            "events": [
                {
                    "id": "8f3c1f0e-0000-4000-8000-000000000001",
                    "timestamp": "2026-11-29T09:00:00Z",
                    "action": "push",
                    "target": {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": digest,
                        "repository": repository,
                        "tag": tag,
                    },
                    "request": {"host": "127.0.0.1:5000", "method": "PUT"},
                }
            ]
        }
    ).encode()


def harbor(repository: str, tag: str, digest: str) -> bytes:
    return json.dumps(
        {
            "type": "PUSH_ARTIFACT",
            "occur_at": 1764406800,
            "operator": "ci",
            "event_data": {
                "resources": [{"digest": digest, "tag": tag}],
                "repository": {"repo_full_name": repository},
            },
        }
    ).encode()


def synced(source: Registry, target: Registry, repo: str, tag: str) -> bool:
    want = manifest_raw(source.url, repo, tag)
    return want is not None and manifest_raw(target.url, repo, tag) == want


def test_interval_sync_picks_up_a_new_tag(
    source: Registry, target: Registry, daemons: DaemonFactory, tmp_path: Path
) -> None:
    push(source.url, REPO_A, "v1", image("v1"))
    cfg = write_config(
        tmp_path / "config.yaml",
        {"src": source.url, "dst": target.url},
        [rule("interval", [REPO_A], interval="1s")],
    )
    d = daemons(cfg)
    d.wait_ready()
    assert d.get("/healthz") == (200, b"ok\n")
    wait_until(lambda: synced(source, target, REPO_A, "v1"), 10, "v1 at the target")
    push(source.url, REPO_A, "v2", image("v2"))
    took = wait_until(lambda: synced(source, target, REPO_A, "v2"), 10, "v2 at the target")
    assert took < 5
    assert (d.metric("syncd_images_synced_total", rule="interval", target="dst") or 0) >= 2
    # The audit trail: one JSON event per image copy with the fields an auditor needs.
    copies = [e for e in d.logs() if e.get("event") == "image_copy"]
    assert {"rule", "source", "target", "digest", "bytes", "seconds", "result"} <= copies[0].keys()
    # The start line says which event loop runs the daemon (uvloop unless told otherwise).
    started = [e for e in d.logs() if e.get("message") == "syncd running"]
    assert started and started[0]["event_loop"] == "uvloop", started
    assert d.stop() == 0


def test_webhook_delivers_a_new_tag_within_5s_with_a_1h_interval(
    source: Registry, target: Registry, daemons: DaemonFactory, tmp_path: Path
) -> None:
    push(source.url, REPO_A, "v1", image("v1"))
    cfg = write_config(
        tmp_path / "config.yaml",
        {"src": source.url, "dst": target.url},
        [rule("hourly", [REPO_A, "team/other-*"], interval="1h"), rule("unrelated", ["x/y"])],
    )
    d = daemons(cfg)
    d.wait_ready()
    wait_until(lambda: synced(source, target, REPO_A, "v1"), 10, "the start-up pass")
    wait_until(
        lambda: len([e for e in d.logs() if e.get("event") == "rule_pass"]) >= 2,
        5,
        "the start-up passes to finish",
    )

    digest = push(source.url, REPO_A, "v2", image("v2"))
    body = envelope(REPO_A, "v2", digest)
    # Without the token, or with a wrong one, nothing happens.
    assert d.post("/webhooks/distribution", body, token=None)[0] == 401
    assert d.post("/webhooks/distribution", body, token="wrong")[0] == 401
    assert d.post("/webhooks/harbor", body, token=None)[0] == 401
    assert d.post("/webhooks/distribution", b"{not json", token=TOKEN)[0] == 400
    # The marker: an accepted hook for another repository the rule watches. A refused hook
    # that had queued REPO_A would ride in the same debounced pass.
    marker = "team/other-marker"
    assert d.post("/webhooks/distribution", envelope(marker, "v1", digest))[0] == 202
    wait_until(lambda: webhook_passes_of(d), 10, "the marker's webhook pass")
    assert webhook_passes_of(d)[0]["repositories"] == [marker]
    assert "v2" not in tags(target.url, REPO_A)

    start = time.monotonic()
    status, payload = d.post("/webhooks/distribution", body)
    assert status == 202
    assert json.loads(payload) == {"events": 1, "rules": ["hourly"]}
    wait_until(lambda: synced(source, target, REPO_A, "v2"), 5, "v2 via the webhook")
    took = time.monotonic() - start
    assert took < 5

    # Harbor's webhook does the same, and the pass is limited to the pushed repository.
    digest = push(source.url, REPO_A, "v3", image("v3"))
    assert d.post("/webhooks/harbor", harbor(REPO_A, "v3", digest))[0] == 202
    wait_until(lambda: synced(source, target, REPO_A, "v3"), 5, "v3 via the Harbor webhook")
    webhook_passes = webhook_passes_of(d)[1:]  # after the marker's
    assert webhook_passes and all(e["repositories"] == [REPO_A] for e in webhook_passes)
    assert all(e["rule"] == "hourly" for e in webhook_passes)
    malformed = d.events("webhook malformed")
    assert malformed and malformed[0]["webhook"] == "distribution"
    assert TOKEN not in d.output()
    assert d.stop() == 0
    print(f"webhook to synced tag: {took:.2f}s")


def webhook_passes_of(d: DaemonProcess) -> list[dict[str, Any]]:
    return [e for e in d.events("rule pass started") if e.get("trigger") == "webhook"]


def test_registry_notifications_trigger_a_sync(
    registries: RegistryFactory, daemons: DaemonFactory, tmp_path: Path
) -> None:
    port = free_port()
    endpoint = {
        "name": "syncd",
        "url": f"http://127.0.0.1:{port}/webhooks/distribution",
        "headers": {"Authorization": [f"Bearer {TOKEN}"]},
        "timeout": "2s",
        "threshold": 3,
        "backoff": "1s",
        "ignoredmediatypes": ["application/octet-stream"],
    }
    source = registries(notifications={"endpoints": [endpoint]})
    target = registries()
    push(source.url, REPO_A, "v1", image("v1"))
    cfg = write_config(
        tmp_path / "config.yaml",
        {"src": source.url, "dst": target.url},
        [rule("hourly", [REPO_A], interval="1h")],
    )
    d = daemons(cfg, port=port)
    d.wait_ready()
    wait_until(lambda: synced(source, target, REPO_A, "v1"), 10, "the start-up pass")
    start = time.monotonic()
    push(source.url, REPO_A, "v2", image("v2"))
    wait_until(lambda: synced(source, target, REPO_A, "v2"), 5, "v2 via registry notifications")
    took = time.monotonic() - start
    accepted = [e for e in d.events("webhook accepted") if REPO_A in e.get("repositories", [])]
    assert accepted and accepted[-1]["rules"] == ["hourly"]
    assert d.stop() == 0
    print(f"push to synced tag via docker-registry notifications: {took:.2f}s")


def _reload_setup(
    source: Registry, target: Registry, tmp_path: Path
) -> tuple[Path, dict[str, str]]:
    push(source.url, REPO_A, "v1", image("a1"))
    push(source.url, "team/extra", "v1", image("e1"))
    regs = {"src": source.url, "dst": target.url}
    cfg = write_config(tmp_path / "config.yaml", regs, [rule("first", [REPO_A], interval="1h")])
    return cfg, regs


def test_sighup_reload_adds_a_rule(
    source: Registry, target: Registry, daemons: DaemonFactory, tmp_path: Path
) -> None:
    cfg, regs = _reload_setup(source, target, tmp_path)
    d = daemons(cfg)
    d.wait_ready()
    wait_until(lambda: synced(source, target, REPO_A, "v1"), 10, "the first rule")
    assert tags(target.url, "team/extra") == []
    write_config(cfg, regs, [rule("first", [REPO_A], interval="1h"), rule("added", ["team/extra"])])
    d.signal(signal.SIGHUP)
    wait_until(lambda: synced(source, target, "team/extra", "v1"), 10, "the added rule")
    by_signal = [e for e in d.events("config reloaded") if e["trigger"] == "signal"]
    assert by_signal and by_signal[0]["rules"] == ["first", "added"]
    assert (d.metric("syncd_config_reloads_total", result="success") or 0) >= 1
    assert d.stop() == 0


def test_file_change_reload_adds_a_rule(
    source: Registry, target: Registry, daemons: DaemonFactory, tmp_path: Path
) -> None:
    cfg, regs = _reload_setup(source, target, tmp_path)
    d = daemons(cfg)
    d.wait_ready()
    wait_until(lambda: synced(source, target, REPO_A, "v1"), 10, "the first rule")
    write_config(cfg, regs, [rule("first", [REPO_A], interval="1h"), rule("added", ["team/extra"])])
    took = wait_until(lambda: synced(source, target, "team/extra", "v1"), 10, "the added rule")
    assert took < 6  # one 2 s poll, the settle pause, one pass
    assert [e["trigger"] for e in d.events("config reloaded")] == ["file change"]
    assert d.metric("syncd_config_reloads_total", result="success") == 1
    assert d.stop() == 0


def test_a_broken_reload_keeps_the_old_rules(
    source: Registry, target: Registry, daemons: DaemonFactory, tmp_path: Path
) -> None:
    push(source.url, REPO_A, "v1", image("v1"))
    cfg = write_config(
        tmp_path / "config.yaml",
        {"src": source.url, "dst": target.url},
        [rule("kept", [REPO_A], interval="1s")],
    )
    d = daemons(cfg)
    d.wait_ready()
    wait_until(lambda: synced(source, target, REPO_A, "v1"), 10, "the first pass")
    # A rule pointing at an unknown registry, and a duration that does not parse.
    cfg.write_text(
        cfg.read_text().replace("source: src", "source: nowhere").replace("1s", "every second")
    )
    wait_until(
        lambda: d.metric("syncd_config_reloads_total", result="failure") == 1, 10, "a rejection"
    )
    assert d.metric("syncd_config_last_reload_successful") == 0
    problems = d.events("config reload rejected")
    assert len(problems) >= 2
    assert all(p["line"] >= 1 and p["column"] >= 1 for p in problems)
    assert {"rules[0].source", "rules[0].interval"} <= {p["key"] for p in problems}
    # The old rule keeps syncing.
    push(source.url, REPO_A, "v2", image("v2"))
    wait_until(lambda: synced(source, target, REPO_A, "v2"), 10, "v2 under the old rules")
    # SIGHUP on the same broken file is rejected again; nothing was reloaded in between.
    d.signal(signal.SIGHUP)
    wait_until(
        lambda: d.metric("syncd_config_reloads_total", result="failure") == 2, 10, "a 2nd rejection"
    )
    assert d.metric("syncd_config_reloads_total", result="success") == 0
    assert d.get("/readyz")[0] == 200
    assert d.stop() == 0


def test_an_invalid_config_at_start_exits_2(daemons: DaemonFactory, tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("registries: {}\nrules:\n  - name: x\n    source: nowhere\n")
    d = daemons(cfg)
    assert d.proc is not None
    assert d.proc.wait(30) == 2
    assert d.events("config invalid")


def test_a_taken_port_exits_1(
    source: Registry, target: Registry, daemons: DaemonFactory, tmp_path: Path
) -> None:
    cfg = write_config(
        tmp_path / "config.yaml",
        {"src": source.url, "dst": target.url},
        [rule("r", [REPO_A], interval="1h")],
    )
    first = daemons(cfg)
    first.wait_healthy()
    second = daemons(cfg, port=first.port)
    assert second.proc is not None
    assert second.proc.wait(30) == 1
    assert second.events("cannot listen")
    assert first.stop() == 0


def _blob_ok(registry: Registry, repo: str, digest: str, size: int) -> bool:
    status, headers, _ = http("HEAD", f"{registry.url}/v2/{repo}/blobs/{digest}")
    return status == 200 and int(headers.get("Content-Length", -1)) == size


def test_sigterm_during_a_large_copy_exits_0_and_leaves_no_broken_tag(
    registries: RegistryFactory, daemons: DaemonFactory, tmp_path: Path
) -> None:
    source, target = registries(), registries()
    big = image("big", layers=1, size=150 * 1024 * 1024)
    push(source.url, "team/big", "v1", big)
    cfg = write_config(
        tmp_path / "config.yaml",
        {"src": source.url, "dst": target.url},
        [rule("big", ["team/big"], interval="1h")],
    )
    mark = target.log_mark()
    d = daemons(cfg, "--shutdown-timeout", "1")
    d.wait_healthy()
    # The copy is under way once the target has opened an upload session for it.
    wait_until(
        lambda: any(a.kind == "upload_post" for a in target.accesses(mark, agent="syncd")),
        30,
        "the upload to start",
    )
    d.signal(signal.SIGTERM)
    start = time.monotonic()
    draining = d.get("/readyz")[0]  # 0: already closed
    assert draining in (0, 503)
    assert d.proc is not None
    assert d.proc.wait(30) == 0
    took = time.monotonic() - start
    assert took < 1 + 10  # the shutdown timeout, then a prompt cancel and close
    raw = manifest_raw(target.url, "team/big", "v1")
    cancelled = d.events("cancelling passes still running")
    if raw is None:
        assert cancelled, "no tag, yet the pass was not cancelled"
    else:
        # The copy beat the signal: then the tag must be complete.
        assert raw == big.raw
        assert all(_blob_ok(target, "team/big", b.digest, len(b.data)) for b in big.blobs)
    # Either way the next run completes the image.
    proc = subprocess.run(
        [PYTHON, "-m", "syncd", "-c", str(cfg), "once"],
        cwd=REPO,
        capture_output=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert manifest_raw(target.url, "team/big", "v1") == big.raw
    assert all(_blob_ok(target, "team/big", b.digest, len(b.data)) for b in big.blobs)
    print(f"SIGTERM to exit: {took:.2f}s; cancelled mid-copy: {bool(cancelled)}")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_starts_exactly_as_the_systemd_unit_does(
    source: Registry, target: Registry, daemons: DaemonFactory, tmp_path: Path
) -> None:
    unit = (REPO / "deploy" / "systemd" / "syncd.service").read_text()
    lines = dict(
        line.split("=", 1)
        for line in unit.splitlines()
        if line.startswith(("ExecStart=", "ExecReload="))
    )
    argv = shlex.split(lines["ExecStart"])
    assert argv[0] == "/usr/local/bin/syncd"
    cfg = write_config(
        tmp_path / "config.yaml",
        {"src": source.url, "dst": target.url},
        [rule("unit", [REPO_A], interval="1h")],
    )
    # Only the binary and the config path change; every flag stays as the unit has it.
    argv = [PYTHON, "-m", "syncd"] + [
        str(cfg) if a == "/etc/syncd/config.yaml" else a for a in argv[1:]
    ]
    listen = argv[argv.index("--listen") + 1]
    port = int(listen.rpartition(":")[2])
    if not _port_free(port):
        # Something else on this machine holds the unit's port: the one deviation allowed.
        port = free_port()
        argv[argv.index("--listen") + 1] = f"127.0.0.1:{port}"
    push(source.url, REPO_A, "v1", image("v1"))
    d = daemons(cfg, argv=argv, port=port)
    d.wait_ready()
    wait_until(lambda: synced(source, target, REPO_A, "v1"), 10, "a pass under the unit's flags")
    assert d.logs(), "--log-format json must give JSON lines"

    # The image's HEALTHCHECK command succeeds against it.
    health = next(
        line
        for line in (REPO / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
        if line.startswith("HEALTHCHECK")
    )
    check = json.loads(health[health.index("CMD") + 3 :])
    assert check[0] == "python"
    check = [PYTHON, *check[1:]]
    check[-1] = check[-1].replace("127.0.0.1:9090", f"127.0.0.1:{port}")
    assert subprocess.run(check, timeout=30).returncode == 0

    # ExecReload, with $MAINPID filled in as systemd would.
    reload_cmd = shlex.split(lines["ExecReload"].replace("$MAINPID", str(d.pid)))
    assert subprocess.run(reload_cmd, timeout=30).returncode == 0
    wait_until(
        lambda: d.metric("syncd_config_reloads_total", result="success") == 1, 10, "the reload"
    )
    # systemd's stop: KillSignal=SIGTERM, and a clean exit.
    assert d.stop() == 0
    assert subprocess.run(check, timeout=30, capture_output=True).returncode != 0
