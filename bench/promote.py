"""Promotion inside one registry: syncd against ``skopeo copy``, side by side.

One CNCF distribution registry (storage on /dev/shm) is seeded with the main corpus
(bench.corpus) under ``appNN``; each tool then promotes every tag to ``prod/appNN`` in the
same registry, alternating which goes first, on a fresh registry per pass:

* syncd: ``syncd once`` with one rule whose source and target are that registry and
  ``target_prefix: prod/`` (every blob is mounted from the source repository);
* skopeo: ``skopeo copy --all --preserve-digests`` per tag, two at a time (its own
  blob-info cache may mount blobs it has already seen in this run).

For each pass: wall time, the tool's CPU, and from the registry's access log the bytes
read (blob GETs), the bytes uploaded (the sizes of the blobs committed by upload PUTs) and
the mounts. Every promoted tag is checked to carry the source's digest.

``python -m bench.promote`` (``--scale 0.1 --reps 2`` by default: well under 2 minutes).
Results: ``bench/out/promote-<time>.json`` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench import corpus as C
from bench.run import OUT_DIR, PYTHON, ROOT, SKOPEO, run_commands
from tests.helpers.registry import Registry, RegistryFactory

PREFIX = "prod/"
_PUT_DIGEST = re.compile(r"[?&]digest=(sha256(?:%3A|:)[0-9a-f]{64})")
_LOG_RE = re.compile(
    r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3}) (?P<bytes>\d+|-) '
    r'"[^"]*" "(?P<agent>[^"]*)"'
)


def traffic(reg: Registry, since: int, agent: str, sizes: dict[str, int]) -> dict[str, int]:
    """Bytes read and uploaded, and mounts, of one tool's requests in the access log."""
    reg.settle()
    with (reg.workdir / "registry.log").open("rb") as f:
        f.seek(since)
        text = f.read().decode(errors="replace")
    out = {"read_bytes": 0, "uploaded_bytes": 0, "mounts": 0, "uploads": 0, "requests": 0}
    for m in _LOG_RE.finditer(text):
        if agent not in m["agent"]:
            continue
        out["requests"] += 1
        path, method, status = m["path"], m["method"], int(m["status"])
        if method == "GET" and "/blobs/" in path and "/uploads/" not in path:
            out["read_bytes"] += int(m["bytes"]) if m["bytes"] != "-" else 0
        elif method == "POST" and "mount=" in path and status == 201:
            out["mounts"] += 1
        elif method == "PUT" and "/blobs/uploads/" in path and status == 201:
            d = _PUT_DIGEST.search(path)
            if d:
                out["uploads"] += 1
                out["uploaded_bytes"] += sizes.get(d.group(1).replace("%3A", ":"), 0)
    return out


async def _promoted(url: str, corpus: C.Corpus) -> bool:
    """Every ``prod/`` tag has the digest of the source tag."""
    async with aiohttp.ClientSession() as s:
        for name, repo in corpus.repos.items():
            for tag, digest in repo.tags.items():
                async with s.head(
                    f"{url}/v2/{PREFIX}{name}/manifests/{tag}",
                    headers={"Accept": f"{C.OCI_INDEX}, {C.OCI_MANIFEST}"},
                ) as r:
                    if r.headers.get("Docker-Content-Digest") != digest:
                        return False
    return True


def syncd_pass(reg: Registry, corpus: C.Corpus, workdir: Path) -> Any:
    cfg = workdir / "promote.yml"
    doc = {
        "registries": {"dev": {"url": reg.url}},
        "rules": [
            {
                "name": "promote",
                "source": "dev",
                "targets": ["dev"],
                "repositories": list(corpus.repos),
                "target_prefix": PREFIX,
            }
        ],
    }
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    cmd = [PYTHON, "-m", "syncd", "-c", str(cfg), "--log-level", "warning", "once"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return run_commands([cmd], 1, workdir / "syncd.log", env)


def skopeo_pass(reg: Registry, corpus: C.Corpus, workdir: Path) -> Any:
    cmds = [
        [
            SKOPEO,
            "copy",
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            f"docker://{reg.host}/{name}:{tag}",
            f"docker://{reg.host}/{PREFIX}{name}:{tag}",
        ]
        for name, repo in corpus.repos.items()
        for tag in repo.tags
    ]
    return run_commands(cmds, 2, workdir / "skopeo.log")


TOOLS = {"syncd": ("syncd/", syncd_pass), "skopeo": ("skopeo/", skopeo_pass)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=0.1, help="corpus scale (1.0: ~530 MB)")
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args(argv)
    corpus = C.build_main(args.scale)
    sizes = dict(corpus.sizes)
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    base = Path(tempfile.mkdtemp(prefix="syncd-promote-", dir=shm))
    factory = RegistryFactory(base)
    samples: list[dict[str, Any]] = []
    try:
        for rep in range(args.reps):
            order = list(TOOLS) if rep % 2 == 0 else list(TOOLS)[::-1]
            for name in order:
                agent, run = TOOLS[name]
                reg = factory(storage_on_shm=True)
                asyncio.run(C.push(reg.url, corpus))
                mark = reg.log_mark()
                stats = run(reg, corpus, base)
                row = {
                    "tool": name,
                    "rep": rep,
                    "wall_s": round(stats.wall, 3),
                    "cpu_s": round(stats.cpu, 3),
                    "failures": stats.failures,
                    **traffic(reg, mark, agent, sizes),
                    "verified": asyncio.run(_promoted(reg.url, corpus)),
                }
                samples.append(row)
                print(f"  {name:<6} rep {rep}: {row}", file=sys.stderr, flush=True)
                reg.stop()
                factory.started.remove(reg)
                shutil.rmtree(reg.root, ignore_errors=True)
    finally:
        factory.close()
        shutil.rmtree(base, ignore_errors=True)
    med: dict[str, dict[str, float]] = {}
    for name in TOOLS:
        rows = [s for s in samples if s["tool"] == name]
        med[name] = {
            k: statistics.median(r[k] for r in rows)
            for k in ("wall_s", "cpu_s", "read_bytes", "uploaded_bytes", "mounts", "requests")
        }
    ratio = med["syncd"]["wall_s"] / med["skopeo"]["wall_s"] if med["skopeo"]["wall_s"] else None
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "args": vars(args),
        "corpus": corpus.summary(),
        "median": med,
        "wall_ratio_syncd_to_skopeo": ratio,
        "samples": samples,
    }
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    (OUT_DIR / f"promote-{stamp}.json").write_text(json.dumps(doc, indent=1))
    print("| tool | wall s | CPU s | bytes read | bytes uploaded | mounts | requests |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, m in med.items():
        print(
            f"| {name} | {m['wall_s']:.2f} | {m['cpu_s']:.2f} | {m['read_bytes'] / C.MB:.1f} MiB "
            f"| {m['uploaded_bytes'] / C.MB:.1f} MiB | {m['mounts']:.0f} | {m['requests']:.0f} |"
        )
    if ratio is not None:
        print(f"\nsyncd / skopeo wall: {ratio:.2f}x (medians of {args.reps} passes each)")
    ok = all(s["verified"] and not s["failures"] for s in samples)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
