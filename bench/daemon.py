"""The long-lived daemon against the request floor, pass for pass, on the same registries.

``python -m bench.daemon --tags 50000 --pairs 3`` (about 15 minutes at 50,000 tags) seeds
the many-tags corpus (bench.corpus) into a source and a target registry (storage on tmpfs),
then starts ``syncd run`` (``interval: 2s``, the default state store on, in a file of the
run's own) and measures, alternately, in the same minutes and against the same registries:

* the **request floor** (``bench.run.request_floor``: a plain aiohttp client making the same
  tag lists and manifest HEADs, 8 at a time per registry, on asyncio's own loop), while the
  daemon is stopped (SIGSTOP) between two of its passes;
* one **steady pass** of the daemon, let go (SIGCONT) just before or just after the floor
  (the order alternates from pair to pair, so that a drifting machine favours neither): its
  next pass is due, so it starts at once. Wall is the pass's own
  ``syncd_sync_duration_seconds``; CPU is the daemon's ``/proc`` utime + stime across it.

The machine's own speed drifts by tens of per cent from minute to minute (see
docs/benchmarks.md), so only pairs taken side by side are compared, and the report gives
each pair's ratio and their median. Registry CPU is each ``docker-registry`` process's.

Then the daemon is stopped (SIGTERM) and started again on the same store: its **first pass
after the restart** and the steady pass after it are measured the same way, with requests
counted from the registries' access logs. ``--recheck 10m`` sets ``target_recheck`` for
both daemons. ``--floor-loop uvloop`` runs the floor on uvloop too (syncd runs on uvloop
unless ``SYNCD_EVENT_LOOP=asyncio`` is set for the bench, which the daemons inherit).

Results: one JSON document on stdout and ``bench/out/daemon-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench import corpus as C
from bench.run import _vm_hwm_kb, metric_value, proc_cpu, registry_cpu, request_floor, save_result
from syncd import event_loop
from tests.helpers.registry import Registry, RegistryFactory, free_port

ROOT = Path(__file__).resolve().parent.parent
AGENT = "syncd/"
PASS_TIMEOUT = 1800.0  # seconds; a bound for one pass at any size this machine can seed


class Daemon:
    """One ``syncd run`` process, its passes seen in its own log."""

    def __init__(self, cfg: Path, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.summed = 0.0  # syncd_sync_duration_seconds_sum when last paused
        cmd = [sys.executable, "-m", "syncd", "-c", str(cfg), "--log-level", "info"]
        cmd += ["--listen", f"127.0.0.1:{self.port}", "run"]
        with log.open("ab") as out:
            self.since = out.tell()
            self.proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                start_new_session=True,
            )

    def ended(self) -> int:
        with self.log.open("rb") as f:
            f.seek(self.since)
            return f.read().count(b"rule bench: ")

    def wait_pass(self, k: int) -> None:
        """Until pass ``k`` has ended (its summary line is in the log)."""
        deadline = time.monotonic() + PASS_TIMEOUT
        while self.ended() < k:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pass {k} never ended (exit {self.proc.poll()})")
            time.sleep(0.1)  # sleep-ok: poll interval of a bounded wait

    def duration_sum(self) -> float:
        import urllib.request

        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        return metric_value(text, "syncd_sync_duration_seconds_sum", rule="bench") or 0.0

    def pause_after(self, k: int) -> float:
        """Wait for pass ``k`` to end, read the duration sum, and stop the process there
        (it answers no scrape while stopped)."""
        self.wait_pass(k)
        self.summed = self.duration_sum()
        os.killpg(self.proc.pid, signal.SIGSTOP)
        return self.summed

    def resume(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        self.resume()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def _regs_cpu(regs: list[Registry]) -> float:
    return sum(registry_cpu(r) for r in regs)


def _floor(src: Registry, tgt: Registry, repos: list[str], loop: str) -> dict[str, Any]:
    regs = [src, tgt]
    r0, g0, t0 = resource.getrusage(resource.RUSAGE_SELF), _regs_cpu(regs), time.perf_counter()
    errors = event_loop.run(request_floor(src.url, [tgt.url], repos), loop)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
    if errors:
        raise RuntimeError(f"request floor: {errors[:3]}")
    return {"wall": round(wall, 2), "cpu": round(cpu, 2), "registries_cpu": round(
        _regs_cpu(regs) - g0, 2)}  # fmt: skip


def _pass(d: Daemon, k: int, regs: list[Registry]) -> dict[str, Any]:
    """Let the paused daemon make pass ``k`` and pause it again; that pass's figures."""
    s0, c0, g0 = d.summed, proc_cpu(d.proc.pid), _regs_cpu(regs)
    marks = [r.log_mark() for r in regs]
    d.resume()
    d.pause_after(k)
    cpu, regs_cpu = proc_cpu(d.proc.pid) - c0, _regs_cpu(regs) - g0
    counts = [dict(r.counts(m, AGENT)) for r, m in zip(regs, marks, strict=True)]
    return {
        "wall": round(d.summed - s0, 2),
        "cpu": round(cpu, 2),
        "registries_cpu": round(regs_cpu, 2),
        "peak_rss_mb": round(_vm_hwm_kb(d.proc.pid) / 1024, 1),
        "source_requests": counts[0],
        "target_requests": counts[1],
    }


def run(
    tags: int, pairs: int, recheck: str | None, workdir: Path, floor_loop: str = "asyncio"
) -> dict[str, Any]:
    many = C.build_many(tags)
    factory = RegistryFactory(workdir)
    try:
        src, tgt = factory(storage_on_shm=True), factory(storage_on_shm=True)
        regs = [src, tgt]
        t0 = time.perf_counter()
        asyncio.run(C.push(src.url, many))
        asyncio.run(C.push(tgt.url, many))
        seeded = time.perf_counter() - t0
        print(f"seeded {tags} tags twice in {seeded:.0f}s", file=sys.stderr, flush=True)
        repos = list(many.repos)
        doc: dict[str, Any] = {
            "registries": {"src": {"url": src.url}, "dst": {"url": tgt.url}},
            "defaults": {"interval": "2s"},
            "rules": [
                {"name": "bench", "source": "src", "targets": ["dst"], "repositories": repos}
            ],
            "state": {"path": str(workdir / "state.db")},
        }
        if recheck:
            doc["defaults"]["target_recheck"] = recheck
        cfg = workdir / "syncd.yml"
        cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
        log = workdir / "syncd-run.log"

        daemon = Daemon(cfg, log)
        daemon.pause_after(1)  # the first pass (it confirms every target tag in the store)
        rows = []
        try:
            for i in range(pairs):
                # Floor first in even pairs, daemon first in odd ones: a machine that speeds
                # up or slows down through the run then favours neither side of the ratio.
                if i % 2 == 0:
                    floor = _floor(src, tgt, repos, floor_loop)
                    steady = _pass(daemon, i + 2, regs)
                else:
                    steady = _pass(daemon, i + 2, regs)
                    floor = _floor(src, tgt, repos, floor_loop)
                rows.append({"floor": floor, "daemon": steady})
                print(f"  pair {i + 1}: floor {floor['wall']}s / {floor['cpu']} CPU-s, daemon "
                      f"{steady['wall']}s / {steady['cpu']} CPU-s, {steady['peak_rss_mb']} MB",
                      file=sys.stderr, flush=True)  # fmt: skip
        finally:
            daemon.stop()

        # Marks before the start: the new process may reach the registries at once.
        marks = [r.log_mark() for r in regs]
        restarted = Daemon(cfg, log)
        try:
            first = {
                "wall": round(restarted.pause_after(1), 2),
                "cpu_with_start_up": round(proc_cpu(restarted.proc.pid), 2),
                "source_requests": dict(src.counts(marks[0], AGENT)),
                "target_requests": dict(tgt.counts(marks[1], AGENT)),
            }
            after = _pass(restarted, 2, regs)
        finally:
            restarted.stop()
        print(f"  restart: first pass {first['wall']}s, steady {after['wall']}s",
              file=sys.stderr, flush=True)  # fmt: skip
        ratios = [r["daemon"]["wall"] / r["floor"]["wall"] for r in rows]
        return {
            "tags": many.tag_count,
            "recheck": recheck,
            "floor_loop": floor_loop,
            # what the daemons, which inherit this environment, chose
            "daemon_loop": "asyncio" if event_loop.loop_factory() is None else "uvloop",
            "seed_seconds": round(seeded, 1),
            "pairs": rows,
            "wall_ratio_per_pair": [round(x, 3) for x in ratios],
            "wall_ratio_median": round(statistics.median(ratios), 3),
            "cpu_ratio_median": round(
                statistics.median(r["daemon"]["cpu"] / r["floor"]["cpu"] for r in rows), 3
            ),
            "peak_rss_mb": max(r["daemon"]["peak_rss_mb"] for r in rows),
            "restart_first_pass": first,
            "restart_steady_pass": after,
            "store_bytes": sum(p.stat().st_size for p in workdir.glob("state.db*") if p.is_file()),
        }
    finally:
        factory.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tags", type=int, default=5000)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--recheck", help="target_recheck for the daemons, e.g. 10m")
    parser.add_argument(
        "--floor-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the floor client's event loop (default asyncio's own: a plain client)",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="syncd-bench-daemon-") as d:
        result = run(args.tags, args.pairs, args.recheck, Path(d), args.floor_loop)
    save_result("daemon", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
