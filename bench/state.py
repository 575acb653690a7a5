"""The state store: what it costs, and what it saves a restarted process.

Two measurements (``python -m bench.state``, about two minutes at the default 5,000 tags):

* **store cost**: ``SqliteStore`` alone, on a file in a temporary directory: per 1,000 tags
  written as a pass writes them (a tag record, an image record and three blob locations per
  tag, flushed in batches), the write time, the read time of ``tag_get`` and the file size;
  and the size of the store a real pass over the corpus left behind.
* **restart**: the many-tags corpus (bench.corpus) seeded into a source and a target, then
  process A runs two passes of one rule with ``target_recheck: 1h`` (the first confirms every
  target tag, the second is the steady pass), process B (a restart, same store file) two
  (its first, and a steady one to compare it with in the same minute), and process C (a
  restart with ``state: {path: none}``, as before the store) one pass. Each process is
  ``python -c`` driving ``open_syncer`` and ``Syncer.run_rule`` with a ``Metrics``
  registry, the daemon's own pass code (``probe_up_to_date`` on, bytes tracked), without
  the scheduler: wall is the pass, requests are counted from the registries' access logs
  by User-Agent.

Results: one JSON document on stdout, and ``bench/out/state-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench import corpus as C
from bench.run import save_result
from tests.helpers.registry import RegistryFactory

ROOT = Path(__file__).resolve().parent.parent
AGENT = "syncd/"

_DRIVER = """
import asyncio, json, sys, time
from syncd.config.load import load_config
from syncd.metrics import Metrics
from syncd.sync import open_syncer

async def main() -> None:
    config = load_config(sys.argv[1])
    out = []
    async with open_syncer(config, Metrics()) as syncer:
        for k in range(int(sys.argv[2])):
            t0 = time.perf_counter()
            r = await syncer.run_rule(config.rules[0])
            out.append({"wall": time.perf_counter() - t0, "synced": r.synced,
                        "skipped": r.skipped, "failed": r.failed})
            print("pass", k, flush=True)
            sys.stdin.readline()  # the bench takes its log marks between passes
    print(json.dumps(out), flush=True)

asyncio.run(main())
"""


def store_cost(tags: int) -> dict[str, Any]:
    from syncd.state_sqlite import SqliteStore

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "state.db")
        store = SqliteStore(path, scope="bench")
        reg = "registry.example.com:5000"
        t0 = time.perf_counter()
        for i in range(tags):
            repo, tag = f"team-{i % 50:02d}/app", f"v1.{i // 1000}.{i % 1000}"
            digest = f"sha256:{i:064x}"
            store.tag_put("mirror", reg, repo, tag, digest, at=time.time(), trusted_until=1e10)
            store.image_put(reg, repo, digest, noted=True)
            for b in range(3):
                store.blob_put(reg, f"sha256:{i * 3 + b:064x}", repo)
        store.flush()
        write = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(tags):
            repo, tag = f"team-{i % 50:02d}/app", f"v1.{i // 1000}.{i % 1000}"
            assert store.tag_get("mirror", reg, repo, tag) is not None
        read = time.perf_counter() - t0
        store.close()
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    per = 1000 / tags
    return {
        "tags": tags,
        "write_ms_per_1000_tags": round(write * 1000 * per, 1),
        "tag_get_ms_per_1000": round(read * 1000 * per, 1),
        "bytes_per_1000_tags": round(size * per),
    }


def _config(path: Path, src: str, tgt: str, repos: list[str], state: str) -> Path:
    doc = {
        "registries": {"src": {"url": src}, "dst": {"url": tgt}},
        "defaults": {"target_recheck": "1h"},
        "rules": [{"name": "bench", "source": "src", "targets": ["dst"], "repositories": repos}],
        "state": {"path": state},
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def _process(cfg: Path, passes: int, regs: dict[str, Any]) -> list[dict[str, Any]]:
    """One syncd process making ``passes`` passes; the requests of each, by kind."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _DRIVER, str(cfg), str(passes)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdin and proc.stdout
    marks = {name: r.log_mark() for name, r in regs.items()}
    counts = []
    for _ in range(passes):
        line = proc.stdout.readline()
        assert line.startswith("pass"), line
        counts.append({name: dict(r.counts(marks[name], AGENT)) for name, r in regs.items()})
        marks = {name: r.log_mark() for name, r in regs.items()}
        proc.stdin.write("\n")
        proc.stdin.flush()
    results: list[dict[str, Any]] = json.loads(proc.stdout.readline())
    proc.wait(60)
    for r, c in zip(results, counts, strict=True):
        r["requests"] = c
        r["wall"] = round(r["wall"], 2)
    return results


def restart(tags: int, workdir: Path) -> dict[str, Any]:
    many = C.build_many(tags)
    factory = RegistryFactory(workdir)
    try:
        src, tgt = factory(storage_on_shm=True), factory(storage_on_shm=True)
        t0 = time.perf_counter()
        asyncio.run(C.push(src.url, many))
        asyncio.run(C.push(tgt.url, many))
        seeded = time.perf_counter() - t0
        repos = list(many.repos)
        state = str(workdir / "state.db")
        cfg = _config(workdir / "store.yml", src.url, tgt.url, repos, state)
        none = _config(workdir / "none.yml", src.url, tgt.url, repos, "none")
        regs = {"source": src, "target": tgt}
        a = _process(cfg, 2, regs)
        b = _process(cfg, 2, regs)
        c = _process(none, 1, regs)
        return {
            "tags": many.tag_count,
            "seed_seconds": round(seeded, 1),
            "first_pass_ever": a[0],
            "steady_pass": a[1],
            "restarted_with_store": b[0],
            "steady_after_restart": b[1],
            "restarted_without_store": c[0],
            "store_bytes": sum(
                os.path.getsize(p) for p in workdir.glob("state.db*") if p.is_file()
            ),
        }
    finally:
        factory.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tags", type=int, default=5000)
    parser.add_argument("--store-tags", type=int, default=20_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="syncd-bench-state-") as d:
        doc = {"store": store_cost(args.store_tags), "restart": restart(args.tags, Path(d))}
    save_result("state", doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
