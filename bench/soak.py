"""Soak: many syncd passes over many tags, watching memory and file descriptors for growth.

Two modes:

* ``--mode run`` (default): one long-lived ``syncd run`` with a short ``interval``; a pass is
  seen finishing when ``syncd_sync_duration_seconds_count`` grows on ``/metrics``, and the
  daemon's VmRSS and open descriptors (``/proc/PID/fd``) are sampled after each pass. This is
  what finds leaks: the same process, pass after pass.
* ``--mode once``: ``syncd once`` repeated; each process is polled while it runs and its peak
  VmRSS / descriptor count recorded. Growth here means cost growing with the passes' state
  (e.g. a target that keeps getting bigger), not a leak inside one process.

Between passes the source changes a little (every ``--churn-every`` passes a new small image
and a re-tag of an old one land), so passes are not all pure no-ops.

The report gives first/last/max and a least-squares slope per pass, after ``--warmup`` passes
(caches, connection pools and imports settle first). Exit status 1 when RSS grows more than
``--max-rss-growth-mb`` or descriptors more than ``--max-fd-growth`` over the measured passes
(by the fitted slope × passes), 2 when syncd itself fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from bench import corpus as C
from tests.helpers.registry import Registry, RegistryFactory, free_port

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")
OUT_DIR = Path(__file__).resolve().parent / "out"
_HIST_RE = re.compile(
    r'^syncd_sync_duration_seconds_(?P<kind>count|sum)\{[^}]*rule="soak"[^}]*\}\s+(?P<v>\S+)', re.M
)


@dataclass
class PassSample:
    """One pass: how long it took and what the process held afterwards (or at peak)."""

    index: int
    seconds: float
    rss_mb: float
    fds: int
    hwm_mb: float
    source_requests: int = 0
    target_requests: int = 0


def proc_status(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB of a live process."""
    rss = hwm = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
    return rss, hwm


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def slope(ys: list[float]) -> float:
    """Least-squares slope of ``ys`` against 0, 1, 2, ... (per pass)."""
    n = len(ys)
    if n < 2:
        return 0.0
    mx = (n - 1) / 2
    my = sum(ys) / n
    num = sum((i - mx) * (y - my) for i, y in enumerate(ys))
    den = sum((i - mx) ** 2 for i in range(n))
    return num / den


class Churn:
    """Small changes to the source between passes: a new image, and a re-tag of an old one."""

    def __init__(self, url: str, base: C.Corpus) -> None:
        self.url = url
        self.base = base
        self.root = Path(tempfile.mkdtemp(prefix="syncd-soak-churn-", dir="/dev/shm"))
        self.builder = C.Builder(self.root)
        self.step = 0

    def __call__(self) -> None:
        self.step += 1
        repo_name = sorted(self.base.repos)[self.step % len(self.base.repos)]
        b = self.builder
        digest = b.image(
            f"churn-{self.step}", "linux/amd64", [b.layer(f"churn-{self.step}", 64 * 1024)]
        )
        repo = C.Repo()
        b.tag(repo, f"churn{self.step:04d}", digest)
        old_tag, old_digest = next(iter(self.base.repos[repo_name].tags.items()))
        retag = C.Repo(tags={f"retag{self.step:04d}-{old_tag}": old_digest})
        corpus = C.Corpus(self.root, "churn", {repo_name: repo}, {**b.media_types}, {**b.sizes})
        asyncio.run(C.push(self.url, corpus))
        # The old manifest is already there: this is a tag-only push.
        asyncio.run(C.push(self.url, self.base, repos={repo_name: retag}))


def write_config(
    workdir: Path, src: Registry, tgt: Registry, repos: list[str], interval: str
) -> Path:
    doc = {
        "registries": {"src": {"url": src.url}, "tgt": {"url": tgt.url}},
        "defaults": {"interval": interval},
        "rules": [{"name": "soak", "source": "src", "targets": ["tgt"], "repositories": repos}],
    }
    path = workdir / "soak.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _metrics_passes(url: str) -> tuple[float, float]:
    """(passes finished, seconds spent in them) from the rule's duration histogram."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return -1.0, 0.0
    found = {m["kind"]: float(m["v"]) for m in _HIST_RE.finditer(text)}
    return found.get("count", 0.0), found.get("sum", 0.0)


def soak_run(
    args: argparse.Namespace, cfg: Path, log: Path, churn: Churn, regs: tuple[Registry, Registry]
) -> list[PassSample]:
    """One ``syncd run``; sample after each finished pass."""
    port = free_port()
    metrics = f"http://127.0.0.1:{port}/metrics"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [PYTHON, "-m", "syncd", "-c", str(cfg), "--listen", f"127.0.0.1:{port}"]
    cmd += ["--log-level", "warning", "run"]
    samples: list[PassSample] = []
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        seen = spent = 0.0
        marks = [r.log_mark() for r in regs]
        deadline = time.monotonic() + args.timeout
        while len(samples) < args.passes and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"syncd run exited with {proc.returncode}; see {log}")
            count, total = _metrics_passes(metrics)
            if count > seen:
                # The pass's own duration (histogram sum delta), not the time between passes.
                seconds = (total - spent) / (count - seen)
                seen, spent = count, total
                rss, hwm = proc_status(proc.pid)
                s = PassSample(len(samples), seconds, rss, fd_count(proc.pid), hwm)
                # Requests since the previous sample: about one pass's worth, since the
                # next pass starts only after the interval.
                s.source_requests, s.target_requests = _requests(regs, marks)
                samples.append(s)
                _show(s)
                if args.churn_every and len(samples) % args.churn_every == 0:
                    churn()
            time.sleep(0.1)  # sleep-ok: sampling interval of the soak
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return samples


def soak_once(
    args: argparse.Namespace, cfg: Path, log: Path, churn: Churn, regs: tuple[Registry, Registry]
) -> list[PassSample]:
    """``syncd once`` again and again; each process polled for its peaks while it runs."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [PYTHON, "-m", "syncd", "-c", str(cfg), "--log-level", "warning", "once"]
    samples: list[PassSample] = []
    deadline = time.monotonic() + args.timeout
    marks = [r.log_mark() for r in regs]
    for i in range(args.passes):
        if time.monotonic() > deadline:
            break
        t0 = time.monotonic()
        with log.open("ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        rss = hwm = 0.0
        fds = 0
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                r, h = proc_status(proc.pid)
                rss, hwm, fds = max(rss, r), max(hwm, h), max(fds, fd_count(proc.pid))
            except (OSError, ValueError):
                pass  # exited between poll() and the read
            time.sleep(0.05)  # sleep-ok: sampling interval of memory and fds
        if proc.poll() is None:
            proc.kill()
        if proc.wait() != 0:
            raise RuntimeError(f"syncd once exited with {proc.returncode}; see {log}")
        s = PassSample(i, time.monotonic() - t0, rss, fds, hwm)
        s.source_requests, s.target_requests = _requests(regs, marks)
        samples.append(s)
        _show(s)
        if args.churn_every and (i + 1) % args.churn_every == 0:
            churn()
    return samples


def _requests(regs: tuple[Registry, Registry], marks: list[int]) -> tuple[int, int]:
    """syncd's requests at (source, target) since ``marks``, which move on to now."""
    counts = []
    for i, reg in enumerate(regs):
        counts.append(len(reg.accesses(since=marks[i], agent="syncd/")))
        marks[i] = reg.log_mark()
    return counts[0], counts[1]


def _show(s: PassSample) -> None:
    print(
        f"  pass {s.index:3d}: {s.seconds:6.2f}s  rss {s.rss_mb:6.1f} MB  "
        f"hwm {s.hwm_mb:6.1f} MB  fds {s.fds}  requests {s.source_requests}/{s.target_requests}",
        file=sys.stderr,
        flush=True,
    )


def report(args: argparse.Namespace, samples: list[PassSample]) -> dict[str, Any]:
    measured = samples[args.warmup :] or samples
    rss = [s.rss_mb for s in measured]
    fds = [float(s.fds) for s in measured]
    rss_growth = slope(rss) * len(rss)
    fd_growth = slope(fds) * len(fds)
    return {
        "passes": len(samples),
        "warmup": args.warmup,
        "rss_mb": {"first": rss[0], "last": rss[-1], "max": max(rss), "slope_per_pass": slope(rss)},
        "fds": {"first": fds[0], "last": fds[-1], "max": max(fds), "slope_per_pass": slope(fds)},
        "pass_seconds": {
            "first": measured[0].seconds,
            "last": measured[-1].seconds,
            "median": statistics.median(s.seconds for s in measured),
            "slope_per_pass": slope([s.seconds for s in measured]),
        },
        "requests_per_pass_median": {
            "source": statistics.median(s.source_requests for s in measured),
            "target": statistics.median(s.target_requests for s in measured),
        },
        "rss_growth_mb": rss_growth,
        "fd_growth": fd_growth,
        "ok": rss_growth <= args.max_rss_growth_mb and fd_growth <= args.max_fd_growth,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["run", "once"], default="run")
    ap.add_argument("--tags", type=int, default=2000, help="tags in the soaked corpus")
    ap.add_argument("--passes", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--interval", default="1s", help="the rule's interval in --mode run")
    ap.add_argument("--churn-every", type=int, default=5, help="passes between source changes")
    ap.add_argument("--max-rss-growth-mb", type=float, default=16.0)
    ap.add_argument("--max-fd-growth", type=float, default=8.0)
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds for the whole soak")
    ap.add_argument("--quick", action="store_true", help="500 tags, 12 passes")
    args = ap.parse_args(argv)
    if args.quick:
        args.tags, args.passes = min(args.tags, 500), min(args.passes, 12)

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    corpus = C.build_many(args.tags)
    base = Path(tempfile.mkdtemp(prefix="syncd-soak-", dir="/dev/shm"))
    factory = RegistryFactory(base)
    churn: Churn | None = None
    try:
        src, tgt = factory(storage_on_shm=True), factory(storage_on_shm=True)
        asyncio.run(C.push(src.url, corpus))
        cfg = write_config(base, src, tgt, list(corpus.repos), args.interval)
        churn = Churn(src.url, corpus)
        log = OUT_DIR / "soak-syncd.log"
        run = soak_run if args.mode == "run" else soak_once
        try:
            samples = run(args, cfg, log, churn, (src, tgt))
        except RuntimeError as e:
            print(f"soak: {e}", file=sys.stderr)
            return 2
    finally:
        factory.close()
        if churn is not None:
            shutil.rmtree(churn.root, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)
    if len(samples) <= args.warmup:
        print(f"soak: only {len(samples)} passes finished before the timeout", file=sys.stderr)
        return 2
    result = report(args, samples)
    doc = {"args": vars(args), "result": result, "samples": [asdict(s) for s in samples]}
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    (OUT_DIR / f"soak-{stamp}.json").write_text(json.dumps(doc, indent=1))
    print(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
