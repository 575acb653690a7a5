"""Restarts are cheap: the state store carries ``target_recheck`` and blob locations over."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import yaml

from syncd.sync import open_syncer
from tests.helpers.images import image, layer, push
from tests.helpers.registry import Registry, manifest_raw, tags
from tests.state.conftest import delete_tag, stateful

UA = "syncd/"


async def test_a_restarted_daemon_keeps_its_recheck_window(
    tmp_path: Path, source: Registry, target: Registry
) -> None:
    for n in range(6):
        push(source.url, "rr/app", f"v{n}", image(f"rr-{n}", layers=1))
    cfg = stateful(tmp_path, source, [target], ["rr/app"], target_recheck=600.0)
    rule = cfg.rules[0]
    async with open_syncer(cfg, None, track_target_bytes=False) as syncer:
        assert (await syncer.run_rule(rule)).synced == 6
        smark, tmark = source.log_mark(), target.log_mark()
        steady = await syncer.run_rule(rule)
        assert steady.ok and steady.skipped == 6
        steady_s, steady_t = source.counts(smark, UA), target.counts(tmark, UA)
    assert steady_t == {}
    smark, tmark = source.log_mark(), target.log_mark()
    async with open_syncer(cfg, None, track_target_bytes=False) as restarted:
        first = await restarted.run_rule(rule)
    assert first.ok and first.skipped == 6
    s, t = source.counts(smark, UA), target.counts(tmark, UA)
    # A new process pings each registry it talks to once (/v2/: how it learns the auth
    # scheme); beyond that, the same requests as the steady pass, and none at the target.
    assert s.pop("ping", 0) <= 1
    assert s == steady_s and t == {}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncd", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def write(path: Path, source: Registry, target: Registry, name: str, **rule: object) -> Path:
    doc = {
        "registries": {"src": {"url": source.url}, "dst": {"url": target.url}},
        "rules": [{"name": name, "source": "src", "targets": ["dst"], **rule}],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_a_restarted_once_mounts_what_an_earlier_run_stored(
    tmp_path: Path, source: Registry, target: Registry
) -> None:
    base = layer("rm-base", 40_000)
    push(source.url, "rm/a", "v1", image("rm-a", layers=1, shared=[base]))
    cfg = write(tmp_path / "c.yaml", source, target, "m", repositories=["rm/a", "rm/b"])
    first = run("-c", str(cfg), "once")  # rm/b is not at the source yet: it fails
    assert "synced=1" in first.stdout
    # The default store (XDG_STATE_HOME, set per test) holds where the base layer went.
    assert (Path(os.environ["XDG_STATE_HOME"]) / "syncd" / "state.db").is_file()
    single = image("rm-b", layers=1, shared=[base])
    push(source.url, "rm/b", "v1", single)
    tmark = target.log_mark()
    second = run("-c", str(cfg), "once")
    assert second.returncode == 0, second.stderr
    assert "mounted=1" in second.stdout
    t = target.counts(tmark, UA)
    assert t["mount"] == 1
    assert "manifest_get" not in t, "the location came from the store, not from reading images"
    assert manifest_raw(target.url, "rm/b", "v1") == single.raw


def test_two_onces_side_by_side_share_one_store(
    tmp_path: Path, source: Registry, target: Registry
) -> None:
    for n in range(20):
        push(source.url, f"rs/app{n % 2}", f"v{n}", image(f"rs-{n}", layers=1))
    state = tmp_path / "shared.db"
    configs = [
        write(
            tmp_path / f"c{i}.yaml",
            source,
            target,
            f"job{i}",
            repositories=[f"rs/app{i}"],
            prune="deleted",
        )
        for i in range(2)
    ]
    for c in configs:
        doc = yaml.safe_load(c.read_text())
        doc["state"] = {"path": str(state)}
        c.write_text(yaml.safe_dump(doc))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "syncd", "-c", str(c), "once"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for c in configs
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    db = sqlite3.connect(state)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = dict(db.execute("SELECT rule, count(*) FROM tags GROUP BY rule").fetchall())
    db.close()
    assert rows == {"job0": 10, "job1": 10}, [err for _, err in outs]
    # Each config prunes only what its own rule wrote.
    delete_tag(source.url, "rs/app0", "v0")
    r = run("-c", str(configs[1]), "once")
    assert r.returncode == 0 and "deleted=0" in r.stdout
    assert "v0" in tags(target.url, "rs/app0")
    r = run("-c", str(configs[0]), "once")
    assert r.returncode == 0 and "deleted=1" in r.stdout
    assert "v0" not in tags(target.url, "rs/app0")


def test_plan_and_dry_run_show_deletions(
    tmp_path: Path, source: Registry, target: Registry
) -> None:
    for tag in ("v1", "v2"):
        push(source.url, "rp/app", tag, image(f"rp-{tag}", layers=1))
    cfg = write(tmp_path / "c.yaml", source, target, "p", repositories=["rp/app"], prune="deleted")
    assert run("-c", str(cfg), "once").returncode == 0
    delete_tag(source.url, "rp/app", "v1")
    text = run("-c", str(cfg), "plan")
    assert text.returncode == 0, text.stderr
    (line,) = [li for li in text.stdout.splitlines() if ":v1 -> dst/rp/app  delete  " in li]
    assert "sha256:" in line
    assert "1 to delete" in text.stdout
    doc = json.loads(run("-c", str(cfg), "plan", "--output", "json").stdout)
    deletes = [i for i in doc["images"] if i["action"] == "delete"]
    assert [(i["tag"], i["target"]) for i in deletes] == [("v1", "dst/rp/app")]
    assert doc["totals"]["delete"] == 1
    dry = run("-c", str(cfg), "once", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "delete" in dry.stdout and "summary:" in dry.stdout
    assert tags(target.url, "rp/app") == ["v1", "v2"]
    real = run("-c", str(cfg), "once")
    assert "deleted=1" in real.stdout and tags(target.url, "rp/app") == ["v2"]


async def test_stale_blob_locations_after_a_target_is_recreated_cost_no_failure(
    tmp_path: Path, source: Registry, target: Registry
) -> None:
    base = layer("rz-base", 30_000)
    a, b = image("rz-a", layers=1, shared=[base]), image("rz-b", layers=1, shared=[base])
    push(source.url, "rz/a", "v1", a)
    cfg = stateful(tmp_path, source, [target], ["rz/a", "rz/b"])
    async with open_syncer(cfg, None) as syncer:
        await syncer.run_rule(cfg.rules[0])  # rz/b is not there yet
    push(source.url, "rz/b", "v1", b)
    # The target comes back empty at the same address: every stored location is wrong.
    target.stop()
    for child in target.root.iterdir():
        shutil.rmtree(child)
    target.start()
    tmark = target.log_mark()
    async with open_syncer(cfg, None) as syncer:
        result = await syncer.run_rule(cfg.rules[0])
    assert result.ok and result.synced == 2
    assert manifest_raw(target.url, "rz/a", "v1") == a.raw
    assert manifest_raw(target.url, "rz/b", "v1") == b.raw
    t = target.counts(tmark, UA)
    assert t["upload_put"] == 5, "base once, two layers, two configs"
