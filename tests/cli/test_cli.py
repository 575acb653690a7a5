"""The syncd command end to end, as a subprocess against real registries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers.images import image, layer, multiarch, push
from tests.helpers.registry import Registry, free_port, manifest_raw, tags


def run(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncd", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def write_config(path: Path, source: Registry, targets: list[Registry], **rule: object) -> Path:
    regs = {"src": {"url": source.url}}
    for i, t in enumerate(targets):
        regs[f"t{i}"] = {"url": t.url}
    doc = {
        "registries": regs,
        "defaults": {"retries": 2},
        "rules": [
            {
                "name": "app",
                "source": "src",
                "targets": [f"t{i}" for i in range(len(targets))],
                **rule,
            }
        ],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def seeded(source: Registry) -> Registry:
    push(source.url, "team-a/app", "v1.0.0", image("cli-1", layers=2))
    push(source.url, "team-a/app", "v1.1.0", multiarch("cli-2"))
    push(source.url, "team-a/app", "latest", image("cli-3", layers=1))
    push(source.url, "team-b/tool", "v2.0.0", image("cli-4", layers=1))
    return source


def test_once_syncs_and_prints_summary(seeded: Registry, target: Registry, tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "c.yaml",
        seeded,
        [target],
        repositories=["team-a/*"],
        tags={"include": [r"^v\d+\.\d+\.\d+$"]},
    )
    r = run("-c", str(cfg), "once")
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip().splitlines()[-1]
    assert line.startswith("summary: images synced=2 skipped=0 failed=0")
    assert tags(target.url, "team-a/app") == ["v1.0.0", "v1.1.0"]
    for tag in ("v1.0.0", "v1.1.0"):
        assert manifest_raw(target.url, "team-a/app", tag) == manifest_raw(
            seeded.url, "team-a/app", tag
        )
    # flags after the command, config from the environment
    r = run("once", "--log-level", "DEBUG", env={"SYNCD_CONFIG": str(cfg)})
    assert r.returncode == 0
    assert "summary: images synced=0 skipped=2 failed=0" in r.stdout


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_once_on_either_event_loop(
    seeded: Registry, target: Registry, tmp_path: Path, loop: str
) -> None:
    cfg = write_config(tmp_path / "c.yaml", seeded, [target], repositories=["team-a/app"])
    r = run("-c", str(cfg), "once", env={"SYNCD_EVENT_LOOP": loop})
    assert r.returncode == 0, r.stderr
    assert "images synced=3 skipped=0 failed=0" in r.stdout
    assert tags(target.url, "team-a/app") == ["latest", "v1.0.0", "v1.1.0"]


def test_an_unknown_event_loop_is_a_usage_error(seeded: Registry, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", seeded, [seeded], repositories=["team-a/app"])
    for command in ("once", "run", "plan"):
        r = run("-c", str(cfg), command, env={"SYNCD_EVENT_LOOP": "tokio"}, timeout=60)
        assert r.returncode == 2, (command, r.stderr)
        assert "SYNCD_EVENT_LOOP='tokio': expected one of uvloop, asyncio" in r.stderr
        assert "Traceback" not in r.stderr


def test_a_second_once_makes_one_head_per_tag_per_registry(
    seeded: Registry, target: Registry, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path / "c.yaml", seeded, [target], repositories=["team-a/*", "team-b/*"])
    assert run("-c", str(cfg), "once").returncode == 0
    smark, tmark = seeded.log_mark(), target.log_mark()
    r = run("-c", str(cfg), "once")
    assert r.returncode == 0 and "skipped=4" in r.stdout, r.stdout + r.stderr
    # 4 tags in 2 repositories (team-* matched through the catalog), and the /v2/ version
    # check each process starts with; nothing else, referrers included.
    s, t = seeded.counts(smark, "syncd/"), target.counts(tmark, "syncd/")
    assert s == {"ping": 1, "catalog": 1, "tags_list": 2, "manifest_head": 4}, s
    assert t == {"ping": 1, "manifest_head": 4}, t


def test_a_later_once_mounts_a_layer_an_earlier_one_stored_elsewhere(
    source: Registry, target: Registry, tmp_path: Path
) -> None:
    base = [layer("cli-mount-base", 50_000)]
    first, second = image("cli-m1", layers=1, shared=base), image("cli-m2", layers=1, shared=base)
    push(source.url, "mnt/one", "v1", first)
    cfg = write_config(tmp_path / "c.yaml", source, [target], repositories=["mnt/*"])
    assert run("-c", str(cfg), "once").returncode == 0
    push(source.url, "mnt/two", "v1", second)
    mark = target.log_mark()
    r = run("-c", str(cfg), "once")
    assert r.returncode == 0 and "synced=1" in r.stdout, r.stdout + r.stderr
    # A new process knows nothing of the first run; mnt/one, found up to date, says where
    # the base layer is. Its own layer and config are uploaded (3 requests each).
    accesses = target.accesses(mark, "syncd/")
    mounts = [a for a in accesses if a.kind == "mount"]
    assert [(a.status, "from=mnt/one" in a.path, base[0].digest in a.path) for a in mounts] == [
        (201, True, True)
    ]
    uploads = [a.path for a in accesses if a.kind == "upload_put"]
    assert len(uploads) == 2 and not any(base[0].digest in u for u in uploads)
    assert manifest_raw(target.url, "mnt/two", "v1") == second.raw


def test_once_rule_flag_and_target_prefix(
    seeded: Registry, target: Registry, tmp_path: Path
) -> None:
    doc = {
        "registries": {"src": {"url": seeded.url}, "dst": {"url": target.url}},
        "rules": [
            {
                "name": "a",
                "source": "src",
                "targets": ["dst"],
                "repositories": ["team-a/app"],
                "tags": ["latest"],
                "target_prefix": "mirror/",
            },
            {"name": "b", "source": "src", "targets": ["dst"], "repositories": ["team-b/tool"]},
        ],
    }
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    r = run("-c", str(cfg), "once", "--rule", "a")
    assert r.returncode == 0, r.stderr
    assert tags(target.url, "mirror/team-a/app") == ["latest"]
    assert tags(target.url, "team-b/tool") == []
    r = run("-c", str(cfg), "once", "--rule", "nope")
    assert r.returncode == 2 and "no rule named" in r.stderr


def test_plan_json_writes_nothing(seeded: Registry, target: Registry, tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "c.yaml",
        seeded,
        [target],
        repositories=["team-a/app"],
        tags={"exclude": ["^latest$"]},
    )
    mark = target.log_mark()
    r = run("-c", str(cfg), "plan", "--output", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    writes = [a for a in target.accesses(mark) if a.method in ("POST", "PUT", "PATCH")]
    assert writes == []
    actions = {(i["tag"], i["action"]) for i in doc["images"]}
    assert actions == {("v1.0.0", "copy"), ("v1.1.0", "copy"), ("latest", "filtered")}
    assert doc["totals"]["missing_bytes"] > 0
    text = run("-c", str(cfg), "plan")
    assert text.returncode == 0 and "v1.0.0 -> t0/team-a/app  copy" in text.stdout
    assert run("-c", str(cfg), "once").returncode == 0
    doc2 = json.loads(run("-c", str(cfg), "plan", "--output", "json").stdout)
    assert {i["action"] for i in doc2["images"] if i["tag"] != "latest"} == {"up_to_date"}


def test_validate_exit_codes(tmp_path: Path, source: Registry) -> None:
    good = write_config(
        tmp_path / "good.yaml", source, [source], repositories=["a/b"], target_prefix="copy/"
    )
    assert run("-c", str(good), "validate").returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "registries:\n  r: {url: http://127.0.0.1:1}\nrules:\n  - name: x\n"
        "    source: r\n    targets: [nowhere]\n    repositories: [a/b]\n"
    )
    r = run("validate", "-c", str(bad))
    assert r.returncode == 2
    assert f"{bad}:6:" in r.stderr and "nowhere" in r.stderr
    r = run("-c", str(bad), "once")
    assert r.returncode == 2
    r = run("-c", str(tmp_path / "missing.yaml"), "validate")
    assert r.returncode == 2


def test_unreachable_registry_exits_1(seeded: Registry, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    doc = {
        "registries": {"src": {"url": seeded.url}, "dst": {"url": dead}},
        "defaults": {"retries": 1},
        "rules": [
            {"name": "x", "source": "src", "targets": ["dst"], "repositories": ["team-b/tool"]}
        ],
    }
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    r = run("-c", str(cfg), "once")
    assert r.returncode == 1
    assert "cannot connect" in r.stderr and "failed=1" in r.stdout
    r = run("-c", str(cfg), "plan")
    assert r.returncode == 1


def test_overwrite_refused_exits_1(seeded: Registry, target: Registry, tmp_path: Path) -> None:
    push(target.url, "team-b/tool", "v2.0.0", image("other", layers=1))
    cfg = write_config(
        tmp_path / "c.yaml", seeded, [target], repositories=["team-b/tool"], overwrite=False
    )
    r = run("-c", str(cfg), "once", "--log-format", "json")
    assert r.returncode == 1
    assert "overwrite refused" in r.stderr
    events = [json.loads(x) for x in r.stderr.splitlines() if x.startswith("{")]
    assert any(e.get("reason") == "overwrite_refused" for e in events)
    plan = json.loads(run("-c", str(cfg), "plan", "--output", "json").stdout)
    assert [i["action"] for i in plan["images"]] == ["overwrite_refused"]


def test_json_logs_one_event_per_image(seeded: Registry, target: Registry, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", seeded, [target], repositories=["team-b/tool"])
    r = run("-c", str(cfg), "--log-format", "json", "once")
    assert r.returncode == 0
    events = [json.loads(x) for x in r.stderr.splitlines() if x.startswith("{")]
    copies = [e for e in events if e.get("event") == "image_copy"]
    assert len(copies) == 1
    e = copies[0]
    assert {"rule", "source", "target", "digest", "bytes", "seconds", "result"} <= set(e)
    assert e["result"] == "copied" and e["bytes"] > 0


def test_an_exact_repository_missing_at_the_source_fails(
    seeded: Registry, target: Registry, tmp_path: Path
) -> None:
    cfg = write_config(
        tmp_path / "c.yaml", seeded, [target], repositories=["team-b/tool", "team-z/nothing"]
    )
    r = run("-c", str(cfg), "once")
    assert r.returncode == 1
    assert "team-z/nothing" in r.stderr and "not found" in r.stderr
    assert "synced=1" in r.stdout and "failed=1" in r.stdout
    # a glob that matches nothing is not an error
    cfg = write_config(tmp_path / "g.yaml", seeded, [target], repositories=["team-z/*"])
    r = run("-c", str(cfg), "once")
    assert r.returncode == 0 and "synced=0 skipped=0 failed=0" in r.stdout


def test_once_listen_serves_metrics_during_the_pass(
    source: Registry, target: Registry, tmp_path: Path
) -> None:
    import time
    import urllib.request

    push(source.url, "big/one", "v1", image("listen-big", layers=1, size=40 * 1024 * 1024))
    cfg = write_config(tmp_path / "c.yaml", source, [target], repositories=["big/one"])
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncd", "-c", str(cfg), "once", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    scraped = ""
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline and not scraped:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                scraped = resp.read().decode()
        except OSError:
            time.sleep(0.02)  # sleep-ok: poll interval of a bounded wait
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "syncd_registry_requests_total" in scraped
    assert "synced=1" in out


def test_a_repository_two_rules_match_is_copied_once_per_target(
    seeded: Registry, target: Registry, tmp_path: Path
) -> None:
    doc = {
        "registries": {"src": {"url": seeded.url}, "dst": {"url": target.url}},
        "rules": [
            {"name": "exact", "source": "src", "targets": ["dst"], "repositories": ["team-b/tool"]},
            {"name": "glob", "source": "src", "targets": ["dst"], "repositories": ["team-b/*"]},
        ],
    }
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    mark = target.log_mark()
    r = run("-c", str(cfg), "once")
    assert r.returncode == 0, r.stderr
    counts = target.counts(mark, "syncd/")
    assert counts["manifest_put"] == 1 and counts["upload_put"] == 2
    assert "synced=1 skipped=1 failed=0" in r.stdout
