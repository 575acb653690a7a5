"""syncd against ``skopeo sync``, side by side on one machine, interleaved and paired.

Starts CNCF distribution registries on loopback (storage on /dev/shm), seeds a source once
from the deterministic corpus (bench.corpus), then repeats, alternating which tool goes first:

* cold: a fresh, empty target; every repository of the corpus;
* noop: the same pass again, nothing to do;
* incr: one new tag pushed to the source, then a pass;
* fanout: two fresh targets (syncd: one rule with two targets; skopeo: one sync per target);
* noop-many: a pass over thousands of tags that the target already has
  (and for syncd alone, the same with ``immutable_tags``).

For each pass: wall time, CPU seconds and peak RSS of the tool's processes (from ``wait4``),
bytes of blob GETs at the source and requests by kind at every registry (from the access logs,
picked out by User-Agent), and the registries' own CPU seconds. The machine's bound is plain
aiohttp clients downloading, then monolithically uploading, every blob with 4 streams.

Floors, in the same repetitions (``--no-floors`` skips them), show which no-op targets this
machine allows at all:

* request floor: an in-process plain aiohttp client making exactly the no-op request budget
  (a ``tags/list`` per repository, a manifest HEAD per tag, at the source and the target at
  once, 8 at a time per registry), next to the tools' ``noop`` and ``noop-many`` passes;
* start-up floor: wall of importing the dependency stack, of ``import syncd.cli`` and of
  ``syncd --help`` (median of 5 runs each, every repetition);
* ``syncd run``: the steady-state pass of the daemon (``noop-run``, ``noop-many-run``), with
  no interpreter start-up and no ``/v2/`` ping, paired with skopeo's no-op of the repetition.

Results: ``bench/out/results-<time>.json`` (+ ``results.json``), a Markdown table on stdout.
``--quick`` is a ~2-minute smoke run; the default full run fits in about 15 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import importlib.util
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench import corpus as C
from tests.helpers.registry import Access, Registry, RegistryFactory, free_port

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")
SKOPEO = shutil.which("skopeo") or "/usr/bin/skopeo"
TOOL_TIMEOUT = 900.0
_LOG_RE = re.compile(
    r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3}) (?P<bytes>\d+|-) '
    r'"[^"]*" "(?P<agent>[^"]*)"'
)
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_FAILED_STATUS = re.compile(r'" (5\d\d|40[02-35-9]|4[1-9]\d) ')


# -- processes ----------------------------------------------------------------------------
@dataclass
class ProcStats:
    """What the tool's processes cost: wall, CPU (user+sys), the largest peak RSS, status."""

    wall: float = 0.0
    cpu: float = 0.0
    user: float = 0.0
    sys: float = 0.0
    rss_mb: float = 0.0
    rss_sum_mb: float = 0.0  # peaks added up: an upper bound when processes overlap
    processes: int = 0
    failures: int = 0
    errors: list[str] = field(default_factory=list)
    in_process: bool = False  # the bench's own process did the work: no RSS of its own


def _run_one(cmd: Sequence[str], log: Path, env: dict[str, str] | None) -> tuple[int, Any, int]:
    """Run ``cmd`` to completion: (exit code, its rusage from ``wait4``, peak RSS in KiB)."""
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            list(cmd), stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    # wait4 gives this child's CPU alone, which RUSAGE_CHILDREN deltas cannot when several
    # tool processes overlap. Its ru_maxrss is useless here: Linux carries the RSS of the
    # forking parent (this benchmark, ~50 MB) over exec into the child's maxrss, so the peak
    # is VmHWM (reset at exec) polled from /proc while the process lives.
    deadline = time.monotonic() + TOOL_TIMEOUT
    hwm_kb = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        hwm_kb = max(hwm_kb, _vm_hwm_kb(proc.pid))
        if time.monotonic() > deadline:
            os.killpg(proc.pid, 9)
        time.sleep(0.01)  # sleep-ok: sampling interval of the memory high-water mark
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage, hwm_kb


def _vm_hwm_kb(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    m = re.search(r"^VmHWM:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else 0  # a zombie has no VmHWM line


def run_commands(
    cmds: Sequence[Sequence[str]], parallel: int, log: Path, env: dict[str, str] | None = None
) -> ProcStats:
    """Run ``cmds`` with at most ``parallel`` at a time; wall covers the whole batch."""
    stats = ProcStats(processes=len(cmds))
    t0 = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        results = list(pool.map(lambda c: _run_one(c, log, env), cmds))
    stats.wall = time.perf_counter() - t0
    for cmd, (rc, usage, hwm_kb) in zip(cmds, results, strict=True):
        stats.cpu += usage.ru_utime + usage.ru_stime
        stats.user += usage.ru_utime
        stats.sys += usage.ru_stime
        rss = hwm_kb / 1024
        stats.rss_mb = max(stats.rss_mb, rss)
        stats.rss_sum_mb += rss
        if rc != 0:
            stats.failures += 1
            stats.errors.append(f"exit {rc}: {' '.join(cmd)[-160:]}")
    return stats


def proc_cpu(pid: int) -> float:
    """CPU seconds (utime + stime) process ``pid`` has used so far, from ``/proc/PID/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def save_result(kind: str, doc: dict[str, Any]) -> Path:
    """Write ``doc`` to ``bench/out/<kind>-<time>.json`` and print it; the path written."""
    OUT_DIR.mkdir(exist_ok=True)
    path = OUT_DIR / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(doc, indent=2))
    print(json.dumps(doc, indent=2))
    return path


def registry_cpu(reg: Registry) -> float:
    """CPU seconds the registry process has used so far."""
    return 0.0 if reg.proc is None else proc_cpu(reg.proc.pid)


# -- access logs -------------------------------------------------------------------------
@dataclass
class RegStats:
    """One registry during one pass, for one tool's User-Agent."""

    role: str
    requests: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    blob_get_bytes: int = 0
    errors: int = 0  # responses >= 400 other than the 404s that answer existence checks
    cpu: float = 0.0


def reg_stats(
    reg: Registry, role: str, since: int, agent: str, cpu: float, until: int | None = None
) -> RegStats:
    with (reg.workdir / "registry.log").open("rb") as f:
        f.seek(since)
        text = f.read(-1 if until is None else until - since).decode(errors="replace")
    counts: Counter[str] = Counter()
    stats = RegStats(role, cpu=round(cpu, 3))
    for m in _LOG_RE.finditer(text):
        if agent not in m["agent"]:
            continue
        access = Access(m["method"], m["path"], int(m["status"]), m["agent"])
        counts[access.kind] += 1
        if access.kind == "blob_get" and m["bytes"] != "-":
            stats.blob_get_bytes += int(m["bytes"])
        if access.status >= 400 and access.status != 404:
            stats.errors += 1
    stats.counts = dict(sorted(counts.items()))
    stats.requests = sum(counts.values())
    return stats


# -- the tools ---------------------------------------------------------------------------
class Tool:
    """A sync tool: how to run one pass from a source to targets over some repositories."""

    name = ""
    agent = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.log = workdir / f"{self.name}.log"

    def sync(
        self, src: Registry, targets: list[Registry], repos: list[str], *, immutable: bool = False
    ) -> ProcStats:
        raise NotImplementedError


class Skopeo(Tool):
    """``skopeo sync`` in its best documented configuration: ``--all --preserve-digests``,
    one process per repository (``--src docker`` takes one repository), two at a time."""

    name = "skopeo"
    agent = "skopeo/"
    parallel = 2

    def sync(
        self, src: Registry, targets: list[Registry], repos: list[str], *, immutable: bool = False
    ) -> ProcStats:
        cmds = [
            [
                SKOPEO,
                "sync",
                "--all",
                "--preserve-digests",
                "--src",
                "docker",
                "--dest",
                "docker",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                f"{src.host}/{repo}",
                target.host,
            ]
            for target in targets
            for repo in repos
        ]
        return run_commands(cmds, self.parallel, self.log)


class Syncd(Tool):
    """``syncd -c CFG once`` with one rule over every repository, default settings."""

    name = "syncd"
    agent = "syncd/"

    def __init__(self, workdir: Path, concurrency: int | None = None) -> None:
        super().__init__(workdir)
        self.concurrency = concurrency
        self.count = 0

    def config(
        self,
        src: Registry,
        targets: list[Registry],
        repos: list[str],
        immutable: bool,
        *,
        interval: str | None = None,
        recheck: str | None = None,
    ) -> Path:
        registries = {"src": {"url": src.url}}
        registries.update({f"t{i}": {"url": t.url} for i, t in enumerate(targets)})
        rule: dict[str, Any] = {
            "name": "bench",
            "source": "src",
            "targets": [f"t{i}" for i in range(len(targets))],
            "repositories": repos,
        }
        if immutable:
            rule["immutable_tags"] = [".*"]
        doc: dict[str, Any] = {"registries": registries, "rules": [rule]}
        defaults: dict[str, Any] = {}
        if self.concurrency:
            defaults["concurrency"] = self.concurrency
        if interval:
            defaults["interval"] = interval
        if recheck:
            defaults["target_recheck"] = recheck
        if defaults:
            doc["defaults"] = defaults
        self.count += 1
        path = self.workdir / f"syncd-{self.count}.yml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def command(self, cfg: Path) -> list[str]:
        return [PYTHON, "-m", "syncd", "-c", str(cfg), "--log-level", "warning", "once"]

    def sync(
        self, src: Registry, targets: list[Registry], repos: list[str], *, immutable: bool = False
    ) -> ProcStats:
        cfg = self.config(src, targets, repos, immutable)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        return run_commands([self.command(cfg)], 1, self.log, env)


class SyncdUvloop(Syncd):
    """syncd with uvloop's event loop, to measure whether it helps (the issue asks)."""

    name = "syncd+uvloop"

    def command(self, cfg: Path) -> list[str]:
        boot = (
            "import asyncio, runpy, uvloop; "
            "asyncio.set_event_loop_policy(uvloop.EventLoopPolicy()); "
            "runpy.run_module('syncd', run_name='__main__', alter_sys=True)"
        )
        return [PYTHON, "-c", boot, "-c", str(cfg), "--log-level", "warning", "once"]


# -- floors: what any client pays, and syncd without its process start-up -----------------
FLOOR_AGENT = "bench-floor/1"
MANIFEST_ACCEPT = ", ".join(
    [
        C.OCI_MANIFEST,
        C.OCI_INDEX,
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)
_LINK_RE = re.compile(r"<([^>]+)>")


async def _floor_side(
    url: str, repos: list[str], concurrency: int
) -> tuple[dict[tuple[str, str], str | None], list[str]]:
    """At one registry, one keep-alive session: list every repository's tags (following
    ``Link`` pages, which distribution sends only when asked for ``n``), then one manifest
    HEAD per tag, ``concurrency`` requests at a time. Returns {(repo, tag): digest}."""
    digests: dict[tuple[str, str], str | None] = {}
    errors: list[str] = []
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        headers={"User-Agent": FLOOR_AGENT},
        timeout=aiohttp.ClientTimeout(total=None, sock_read=120),
    ) as session:

        async def tags(repo: str) -> list[str]:
            out: list[str] = []
            path: str | None = f"/v2/{repo}/tags/list"
            while path:
                async with sem, session.get(url + path) as resp:
                    if resp.status != 200:
                        errors.append(f"{url}{path}: {resp.status}")
                        return out
                    out += (await resp.json()).get("tags") or []
                    link = _LINK_RE.match(resp.headers.get("Link", ""))
                path = link.group(1) if link else None
            return out

        async def head(repo: str, tag: str) -> None:
            async with (
                sem,
                session.head(
                    f"{url}/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT}
                ) as resp,
            ):
                digests[repo, tag] = resp.headers.get("Docker-Content-Digest")
                if resp.status != 200:
                    errors.append(f"HEAD {repo}:{tag} at {url}: {resp.status}")

        listed = await asyncio.gather(*(tags(r) for r in repos))
        await asyncio.gather(*(head(r, t) for r, ts in zip(repos, listed, strict=True) for t in ts))
    return digests, errors


async def request_floor(
    src_url: str, target_urls: list[str], repos: list[str], concurrency: int = 8
) -> list[str]:
    """The issue's no-op request budget and nothing else, at the source and every target at
    once: a ``tags/list`` per repository and a manifest HEAD per tag. Errors, or []."""
    sides = await asyncio.gather(
        *(_floor_side(u, repos, concurrency) for u in [src_url, *target_urls])
    )
    (want, errors), *targets = sides
    for url, (got, errs) in zip(target_urls, targets, strict=True):
        errors += errs
        # A target listing its own tags may hold more; every source tag must match.
        bad = [k for k, d in want.items() if got.get(k) != d]
        if bad:
            errors.append(f"{url}: {len(bad)} tags differ from the source, e.g. {bad[0]}")
    return errors


class RequestFloor(Tool):
    """Not a sync tool: the minimal plain-aiohttp client of ``request_floor``, in-process.
    Its figures are what any client pays for one request per tag per registry; wall and CPU
    exclude interpreter start-up (the client's CPU is this process's, user + system)."""

    name = "request floor"
    agent = "bench-floor/"

    def sync(
        self, src: Registry, targets: list[Registry], repos: list[str], *, immutable: bool = False
    ) -> ProcStats:
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        errors = asyncio.run(request_floor(src.url, [t.url for t in targets], repos))
        wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        user, sys_ = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
        return ProcStats(
            wall=wall,
            cpu=user + sys_,
            user=user,
            sys=sys_,
            processes=1,
            failures=1 if errors else 0,
            errors=errors[:5],
            in_process=True,
        )


STARTUP_COMMANDS: dict[str, list[str]] = {
    # The dependency stack the project mandates, imported and nothing else.
    "import_deps": [PYTHON, "-c", "import asyncio, aiohttp, pydantic, yaml, prometheus_client"],
    "import_syncd_cli": [PYTHON, "-c", "import syncd.cli"],
    # ``syncd.cli`` and ``__main__``, the command line parsed, exit 0; no config, no registry.
    "syncd_help": [PYTHON, "-m", "syncd", "--help"],
}


def startup_floor(runs: int = 5) -> dict[str, Any]:
    """Median wall (and CPU) of ``runs`` runs of each start-up command, PYTHONPATH=ROOT.
    Timed around ``Popen`` and a blocking ``wait4``, so without the 10 ms polling of
    ``run_commands`` (which the tools' walls carry, ≤ 10 ms)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out: dict[str, Any] = {}
    for key, cmd in STARTUP_COMMANDS.items():
        walls, cpus = [], []
        for _ in range(runs):
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
            _, status, usage = os.wait4(proc.pid, 0)
            walls.append(time.perf_counter() - t0)
            cpus.append(usage.ru_utime + usage.ru_stime)
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}")
        out[f"{key}_s"] = statistics.median(walls)
        out[f"{key}_cpu_s"] = statistics.median(cpus)
    return out


DAEMON_INTERVAL = "2s"
# Seconds between /metrics scrapes while waiting for a pass to end: often until the first
# mark, then less, as each scrape costs the daemon CPU that the measured pass is charged.
DAEMON_POLL = (0.1, 0.25)


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of sample ``name`` with (at least) ``labels`` in Prometheus text format."""
    want = {f'{k}="{v}"' for k, v in labels.items()}
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)", line)
        if not m or m[1] != name:
            continue
        have = set(re.findall(r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"', m[2] or ""))
        if want <= have:
            return float(m[3])
    return None


def _scrape(port: int) -> tuple[float | None, float | None]:
    """(count, sum) of the bench rule's ``syncd_sync_duration_seconds``; Nones if not up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None, None
    name = "syncd_sync_duration_seconds"
    return metric_value(text, f"{name}_count", rule="bench"), metric_value(
        text, f"{name}_sum", rule="bench"
    )


# -- one measured pass ---------------------------------------------------------------------
@dataclass
class Sample:
    """One pass of one tool in one scenario and repetition."""

    tool: str
    scenario: str
    rep: int
    proc: ProcStats
    registries: list[RegStats]
    verified: bool | None = None
    note: str = ""

    def reg(self, role: str) -> RegStats:
        return next(r for r in self.registries if r.role == role)

    @property
    def targets(self) -> list[RegStats]:
        return [r for r in self.registries if r.role.startswith("target")]


def keep_failure(
    sample: Sample, log: Path, since: int, marks: list[tuple[str, Registry, int, float]]
) -> str:
    """Copy what a failed pass left in the logs (which live on tmpfs and go with the run)
    to ``bench/out``: the tool's output, and every registry line of the pass that is an
    error or an answer >= 400. Returns the copy's path."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    keep = OUT_DIR / f"failed-{sample.tool}-{sample.scenario}-{sample.rep}-{stamp}.log"
    parts = []
    with log.open("rb") as f:
        f.seek(since)
        parts.append(f"== {sample.tool} output ==\n" + f.read().decode(errors="replace"))
    for role, reg, mark, _ in marks:
        with (reg.workdir / "registry.log").open("rb") as f:
            f.seek(mark)
            lines = f.read().decode(errors="replace").splitlines()
        # 404s are answers (blob and tag probes), 401s the start of every token exchange.
        bad = [ln for ln in lines if "level=error" in ln or _FAILED_STATUS.search(ln)]
        parts.append(f"== {role} registry: {len(bad)} error lines ==\n" + "\n".join(bad[-200:]))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    keep.write_text("\n".join(parts) + "\n")
    print(f"  kept the failed pass's logs: {keep}", file=sys.stderr)
    return str(keep)


def measure(
    tool: Tool,
    scenario: str,
    rep: int,
    src: Registry,
    targets: list[Registry],
    repos: list[str],
    *,
    immutable: bool = False,
) -> Sample:
    regs = [("source", src)] + [(f"target{i}", t) for i, t in enumerate(targets)]
    marks = [(role, r, r.log_mark(), registry_cpu(r)) for role, r in regs]
    tool_mark = tool.log.stat().st_size if tool.log.exists() else 0
    proc = tool.sync(src, targets, repos, immutable=immutable)
    for _, r in regs:
        r.settle()  # the registry logs a request just after answering it
    stats = [
        reg_stats(r, role, mark, tool.agent, registry_cpu(r) - cpu0)
        for role, r, mark, cpu0 in marks
    ]
    sample = Sample(tool.name, scenario, rep, proc, stats)
    if proc.failures:
        sample.note = keep_failure(sample, tool.log, tool_mark, marks)
    _progress(sample)
    return sample


DAEMON_TOOL = "syncd run"
# The daemon's 5,000-tag pass once more with ``target_recheck`` (an opt-in, not a default).
RECHECK = "10m"
RECHECK_SCENARIO = "noop-many-recheck"


def _log_size(reg: Registry) -> int:
    """The access log's size now, without waiting for it to settle (``log_mark`` does)."""
    path = reg.workdir / "registry.log"
    return path.stat().st_size if path.exists() else 0


def daemon_pass(
    tool: Syncd,
    scenario: str,
    rep: int,
    src: Registry,
    tgt: Registry,
    repos: list[str],
    *,
    recheck: str | None = None,
) -> Sample:
    """A steady-state pass of ``syncd run``: a daemon started with the ``once`` config plus
    ``defaults.interval``, measured over its second pass (or a later one, see below).

    Wall is that pass's own duration (the delta of ``syncd_sync_duration_seconds_sum``), so
    it carries no interpreter start-up and no ``/v2/`` ping (once per process, before the
    first pass); CPU is the daemon's ``/proc`` utime + stime from mark to mark (the idle gap
    before the pass, the pass, and one ``/metrics`` scrape).

    Marks (access-log offsets, registries' and daemon's CPU) are taken between passes, as
    soon as the daemon's log shows pass k ended, and the pass measured is the one between
    two marks. The next pass starts ``interval`` ± 10 % after the *start* of the previous
    one, so a gap can be short. The daemon runs at ``--log-level info`` (two lines a pass)
    and logs "rule pass started" before it sends anything: a mark taken when pass k + 1 had
    already started is not clean, and the bench moves on to the next pair of clean marks.

    With ``recheck`` the config also sets ``defaults.target_recheck``: the target tags the
    first pass checked are trusted in the measured one, which then asks only the source.
    """
    cfg = tool.config(src, [tgt], repos, False, interval=DAEMON_INTERVAL, recheck=recheck)
    port = free_port()
    cmd = [PYTHON, "-m", "syncd", "-c", str(cfg), "--log-level", "info"]
    cmd += ["--listen", f"127.0.0.1:{port}", "run"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    stats = ProcStats(processes=1)
    regs = [("source", src), ("target0", tgt)]
    log = tool.workdir / "syncd-run.log"
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        since = out.tell()
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def passes_ended() -> tuple[int, int]:
        """(passes ended, passes started) by the daemon's own log lines."""
        with log.open("rb") as f:
            f.seek(since)
            text = f.read()
        return text.count(b"rule bench: "), text.count(b"rule pass started")

    def mark(k: int, poll: float) -> tuple[bool, float, list[tuple[int, float]], float]:
        """After pass k ended: (clean, duration sum, [(log offset, CPU)] per registry, CPU).

        The end of a pass is seen in the daemon's log (its "rule NAME: … in Ns" line), not
        by scraping ``/metrics``: a scrape costs the daemon ~7 ms of CPU, and polling one a
        few times a second would be billed to the pass being measured.
        """
        deadline = time.monotonic() + TOOL_TIMEOUT  # bounded, and a dead daemon ends it
        while time.monotonic() < deadline and proc.poll() is None:
            if passes_ended()[0] >= k:
                break
            time.sleep(poll)  # sleep-ok: poll interval of a bounded wait
        else:
            raise RuntimeError(f"pass {k} never ended (exit {proc.poll()})")
        cpu = proc_cpu(proc.pid)
        for _, r in regs:
            r.settle()  # the registry logs a request just after answering it
        regs_now = [(_log_size(r), registry_cpu(r)) for _, r in regs]
        n, total = _scrape(port)
        ended, started = passes_ended()
        clean = n == k and ended == k and started == k
        return clean, total or 0.0, regs_now, cpu

    regstats: list[RegStats] = []
    note = ""
    try:
        k = 1
        before = mark(k, DAEMON_POLL[0])
        while True:
            after = mark(k + 1, DAEMON_POLL[1])
            if before[0] and after[0]:
                break
            if k >= 5:
                raise RuntimeError("no two clean gaps between passes to take the marks in")
            k, before = k + 1, after
        stats.wall = after[1] - before[1]
        stats.cpu = after[3] - before[3]
        stats.rss_mb = stats.rss_sum_mb = _vm_hwm_kb(proc.pid) / 1024
        if k > 1:
            note = f"measured pass {k + 1}: a mark fell into an earlier pass"
        regstats = [
            reg_stats(r, role, off0, tool.agent, cpu1 - cpu0, until=off1)
            for (role, r), (off0, cpu0), (off1, cpu1) in zip(regs, before[2], after[2], strict=True)
        ]
    except RuntimeError as e:
        stats.failures = 1
        stats.errors.append(f"{e}: {' '.join(cmd)[-160:]}")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait(5)
        if rc != 0 and not stats.failures:
            stats.failures = 1
            stats.errors.append(f"exit {rc} after SIGTERM: {' '.join(cmd)[-160:]}")
    sample = Sample(DAEMON_TOOL, scenario, rep, stats, regstats or [RegStats(r) for r, _ in regs])
    sample.note = note
    _progress(sample)
    return sample


def _progress(sample: Sample) -> None:
    proc, stats = sample.proc, sample.registries
    flag = "" if not proc.failures else f"  FAILED {proc.errors[:2]}"
    print(
        f"  {sample.scenario:<16} {sample.tool:<6} rep {sample.rep}: {proc.wall:7.2f}s wall "
        f"{proc.cpu:6.2f}s cpu {proc.rss_mb:6.1f}MB rss "
        f"src {stats[0].requests} req / {stats[0].blob_get_bytes / C.MB:.1f}MB, "
        f"targets {[s.requests for s in stats[1:]]} req{flag}"
        + (f"  ({sample.note})" if sample.note else ""),
        file=sys.stderr,
        flush=True,
    )


async def _verify(url: str, corpus: C.Corpus, repos: dict[str, C.Repo]) -> bool:
    """Every tag of ``repos`` is at ``url`` with the source's digest."""
    accept = ", ".join([C.OCI_INDEX, C.OCI_MANIFEST])
    ok = True
    async with C.new_session(8) as session:

        async def check(repo: str, tag: str, digest: str) -> None:
            nonlocal ok
            async with session.head(
                f"{url}/v2/{repo}/manifests/{tag}", headers={"Accept": accept}
            ) as resp:
                if resp.status != 200 or resp.headers.get("Docker-Content-Digest") != digest:
                    ok = False

        await asyncio.gather(
            *(check(r, t, d) for r, repo in repos.items() for t, d in repo.tags.items())
        )
    return ok


def verify(reg: Registry, corpus: C.Corpus, repos: dict[str, C.Repo] | None = None) -> bool:
    return asyncio.run(_verify(reg.url, corpus, repos or corpus.repos))


# -- the machine's bound -------------------------------------------------------------------
async def _bound_download(url: str, corpus: C.Corpus, streams: int) -> tuple[float, int]:
    home = {d: name for name, repo in corpus.repos.items() for d in repo.blobs}
    total = 0
    async with C.new_session(streams) as session:
        sem = asyncio.Semaphore(streams)

        async def get(digest: str) -> None:
            nonlocal total
            async with sem, session.get(f"{url}/v2/{home[digest]}/blobs/{digest}") as resp:
                resp.raise_for_status()
                async for chunk in resp.content.iter_chunked(C.CHUNK):
                    total += len(chunk)

        t0 = time.perf_counter()
        await asyncio.gather(*(get(d) for d in corpus.unique_blobs()))
        return time.perf_counter() - t0, total


async def _bound_upload(url: str, corpus: C.Corpus, streams: int) -> tuple[float, int]:
    async with C.new_session(streams) as session:
        sem = asyncio.Semaphore(streams)

        async def put(digest: str) -> None:
            async with sem:
                async with session.post(f"{url}/v2/bound/blobs/uploads/") as resp:
                    location = resp.headers["Location"]
                await C.upload_put(session, url, location, corpus.path(digest), digest)

        t0 = time.perf_counter()
        blobs = corpus.unique_blobs()
        await asyncio.gather(*(put(d) for d in blobs))
        return time.perf_counter() - t0, sum(corpus.sizes[d] for d in blobs)


async def _bound_copy(src: str, dst: str, corpus: C.Corpus, streams: int) -> tuple[float, int]:
    """A minimal copier: each unique blob streamed from a GET straight into a monolithic PUT,
    4 at a time, no hashing, no checks. Not the issue's bound (that is download and upload
    measured apart); it shows what any Python copier can reach when both share the cores."""
    home = {d: name for name, repo in corpus.repos.items() for d in repo.blobs}
    async with C.new_session(streams) as reader, C.new_session(streams) as writer:
        sem = asyncio.Semaphore(streams)

        async def copy(digest: str) -> None:
            async with sem:
                async with writer.post(f"{dst}/v2/bound/blobs/uploads/") as resp:
                    location = resp.headers["Location"]
                if location.startswith("/"):
                    location = dst + location
                sep = "&" if "?" in location else "?"
                async with reader.get(f"{src}/v2/{home[digest]}/blobs/{digest}") as got:
                    got.raise_for_status()

                    async def body() -> Any:
                        async for chunk in got.content.iter_chunked(C.CHUNK):
                            yield chunk

                    async with writer.put(
                        f"{location}{sep}digest={digest}",
                        data=body(),
                        headers={
                            "Content-Type": "application/octet-stream",
                            "Content-Length": str(corpus.sizes[digest]),
                        },
                    ) as put:
                        if put.status != 201:
                            raise RuntimeError(f"copy {digest}: {put.status}")

        t0 = time.perf_counter()
        blobs = corpus.unique_blobs()
        await asyncio.gather(*(copy(d) for d in blobs))
        return time.perf_counter() - t0, sum(corpus.sizes[d] for d in blobs)


# -- the run -----------------------------------------------------------------------------
class Bench:
    """Registries, corpora and every sample of one run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.base = Path(tempfile.mkdtemp(prefix="syncd-bench-", dir=_shm()))
        self.factory = RegistryFactory(self.base)
        self.samples: list[Sample] = []
        self.bound: list[dict[str, float]] = []
        self.extras: dict[str, Any] = {}
        self.tools: list[Tool] = [
            Syncd(self.base, args.syncd_concurrency),
            Skopeo(self.base),
        ]
        if args.uvloop:
            self.tools.insert(1, SyncdUvloop(self.base, args.syncd_concurrency))
        self.floors = not args.no_floors
        self.floor = RequestFloor(self.base)
        self.startup: list[dict[str, Any]] = []

    def registry(self) -> Registry:
        return self.factory(storage_on_shm=True)

    def discard(self, reg: Registry) -> None:
        """Stop a registry and free its tmpfs storage (targets are fresh for every pass)."""
        reg.stop()
        self.factory.started.remove(reg)
        shutil.rmtree(reg.root, ignore_errors=True)
        shutil.rmtree(reg.workdir, ignore_errors=True)

    def close(self) -> None:
        self.factory.close()
        shutil.rmtree(self.base, ignore_errors=True)

    def order(self, rep: int) -> list[Tool]:
        # Alternate who goes first so drift on a shared machine hits both tools alike.
        return self.tools if rep % 2 == 0 else self.tools[::-1]

    def add(self, sample: Sample) -> Sample:
        self.samples.append(sample)
        return sample

    # -- scenarios ---------------------------------------------------------------------
    def main_corpus(self, main: C.Corpus, src: Registry) -> None:
        repos = list(main.repos)
        extra_repo, extra = next(iter(main.extra.items()))
        extra_digest = extra.tags["1.4"]
        for rep in range(self.args.reps):
            self.bound_once(main, src, rep)
            if self.floors:
                self.startup_once(rep)
            for i, tool in enumerate(self.order(rep)):
                target = self.registry()
                s = self.add(measure(tool, "cold", rep, src, [target], repos))
                s.verified = verify(target, main)
                self.add(measure(tool, "noop", rep, src, [target], repos))
                if self.floors and i == 0:
                    # Once a repetition, next to the first tool's no-op, on the same target.
                    self.add(measure(self.floor, "noop", rep, src, [target], repos))
                if self.floors and type(tool) is Syncd:
                    self.add(daemon_pass(tool, "noop-run", rep, src, target, repos))
                asyncio.run(C.push(src.url, main, repos=main.extra))
                s = self.add(measure(tool, "incr", rep, src, [target], repos))
                s.verified = verify(target, main, main.extra)
                asyncio.run(C.delete_manifest(src.url, extra_repo, extra_digest))
                self.discard(target)
                pair = [self.registry(), self.registry()]
                s = self.add(measure(tool, "fanout", rep, src, pair, repos))
                s.verified = all(verify(t, main) for t in pair)
                for t in pair:
                    self.discard(t)

    def startup_once(self, rep: int) -> None:
        row = {"rep": rep, **startup_floor()}
        self.startup.append(row)
        print(
            f"  start-up rep {rep}: imports {row['import_deps_s']:.3f}s, "
            f"import syncd.cli {row['import_syncd_cli_s']:.3f}s, "
            f"syncd --help {row['syncd_help_s']:.3f}s",
            file=sys.stderr,
            flush=True,
        )

    def bound_once(self, main: C.Corpus, src: Registry, rep: int) -> None:
        streams = self.args.bound_streams
        dl_wall, dl_bytes = asyncio.run(_bound_download(src.url, main, streams))
        sink = self.registry()
        up_wall, up_bytes = asyncio.run(_bound_upload(sink.url, main, streams))
        self.discard(sink)
        sink = self.registry()
        cp_wall, cp_bytes = asyncio.run(_bound_copy(src.url, sink.url, main, streams))
        self.discard(sink)
        row = {
            "rep": rep,
            "download_s": dl_wall,
            "download_MBps": dl_bytes / C.MB / dl_wall,
            "upload_s": up_wall,
            "upload_MBps": up_bytes / C.MB / up_wall,
            "plain_copy_s": cp_wall,
            "plain_copy_MBps": cp_bytes / C.MB / cp_wall,
        }
        self.bound.append(row)
        print(
            f"  bound rep {rep}: download {row['download_MBps']:.0f} MB/s, "
            f"upload {row['upload_MBps']:.0f} MB/s, plain copy {row['plain_copy_MBps']:.0f} MB/s",
            file=sys.stderr,
            flush=True,
        )

    def many_tags(self, many: C.Corpus) -> None:
        src, tgt = self.registry(), self.registry()
        t0 = time.perf_counter()
        asyncio.run(C.push(src.url, many))
        asyncio.run(C.push(tgt.url, many))
        print(f"  seeded {many.tag_count} tags twice in {time.perf_counter() - t0:.0f}s",
              file=sys.stderr)  # fmt: skip
        repos = list(many.repos)
        for rep in range(self.args.many_reps):
            for tool in self.order(rep):
                self.add(measure(tool, "noop-many", rep, src, [tgt], repos))
            if self.floors:
                self.add(measure(self.floor, "noop-many", rep, src, [tgt], repos))
            for tool in self.tools:
                if type(tool) is Syncd:
                    self.add(
                        measure(tool, "noop-many-immutable", rep, src, [tgt], repos, immutable=True)
                    )
                    if self.floors:
                        self.add(daemon_pass(tool, "noop-many-run", rep, src, tgt, repos))
                        self.add(
                            daemon_pass(
                                tool, RECHECK_SCENARIO, rep, src, tgt, repos, recheck=RECHECK
                            )
                        )
        self.discard(src)
        self.discard(tgt)

    def big_blob(self, big: C.Corpus) -> None:
        src = self.registry()
        asyncio.run(C.push(src.url, big))
        for tool in self.tools:
            tgt = self.registry()
            s = self.add(measure(tool, "big-blob", 0, src, [tgt], list(big.repos)))
            s.verified = verify(tgt, big)
            self.discard(tgt)
        self.discard(src)

    def profile(self, main: C.Corpus, src: Registry, many: C.Corpus | None) -> None:
        """Extra syncd passes under profilers (not part of the figures).

        py-spy samples on-CPU stacks only (``--idle`` off), which is where syncd's own CPU
        seconds go; pyinstrument gives the wall-clock picture of the same kind of pass.
        """
        syncd = next(t for t in self.tools if type(t) is Syncd)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        runs: list[tuple[str, Registry, C.Corpus]] = [("cold", src, main)]
        many_src = many_tgt = None
        if many:
            many_src, many_tgt = self.registry(), self.registry()
            asyncio.run(C.push(many_src.url, many))
            asyncio.run(C.push(many_tgt.url, many))
            runs.append(("noop-many", many_src, many))
        for name, source, corpus in runs:
            for profiler in ("py-spy", "pyinstrument"):
                tgt = many_tgt if name == "noop-many" and many_tgt else self.registry()
                cfg = syncd.config(source, [tgt], list(corpus.repos), False)
                if profiler == "py-spy":
                    out = OUT_DIR / f"profile-{name}.pyspy.txt"
                    cmd = [str(ROOT / ".venv/bin/py-spy"), "record", "--format", "raw"]
                    cmd += ["--rate", "250", "--nonblocking", "-o", str(out), "--"]
                else:
                    out = OUT_DIR / f"profile-{name}.pyinstrument.txt"
                    cmd = [PYTHON, "-m", "pyinstrument", "-r", "text", "-o", str(out)]
                cmd += (["-m"] if profiler == "pyinstrument" else [PYTHON, "-m"]) + [
                    "syncd",
                    "-c",
                    str(cfg),
                    "--log-level",
                    "warning",
                    "once",
                ]
                stats = run_commands([cmd], 1, syncd.log, env)
                if tgt is not many_tgt:
                    self.discard(tgt)
                self.extras[f"profile_{name}_{profiler}"] = {"path": str(out), "wall": stats.wall}
                print(f"  {profiler} profile of a {name} pass: {out}", file=sys.stderr)
        for reg in (many_src, many_tgt):
            if reg:
                self.discard(reg)


# -- reporting ---------------------------------------------------------------------------
def _shm() -> str:
    return "/dev/shm" if Path("/dev/shm").is_dir() else tempfile.gettempdir()


def warm_memory(size: int) -> float:
    """Write and delete ``size`` bytes on the registries' tmpfs; returns the seconds taken.

    On a virtual machine, memory the guest touches for the first time is slow to fault
    in: a registry writing 1 GiB into fresh tmpfs pages measured 6.5 CPU-seconds, into
    pages used before 3.8. Whichever tool ran first into new memory would pay for it.
    """
    path = Path(_shm()) / f"syncd-bench-warm-{os.getpid()}"
    block = b"\1" * C.MB * 16
    t0 = time.perf_counter()
    try:
        with path.open("wb") as f:
            for _ in range(size // len(block)):
                f.write(block)
    finally:
        path.unlink(missing_ok=True)
    return time.perf_counter() - t0


OUT_DIR = Path(__file__).resolve().parent / "out"


def _median(xs: Iterable[float]) -> float | None:
    xs = list(xs)
    return statistics.median(xs) if xs else None


def _pick(samples: list[Sample], tool: str, scenario: str) -> list[Sample]:
    return [s for s in samples if s.tool == tool and s.scenario == scenario]


Metric = Callable[[Sample], float | None]

METRICS: dict[str, Metric] = {
    "wall_s": lambda s: s.proc.wall,
    "cpu_s": lambda s: s.proc.cpu,
    "cpu_sys_s": lambda s: s.proc.sys,
    "peak_rss_mb": lambda s: None if s.proc.in_process else s.proc.rss_mb,
    "source_mb_read": lambda s: s.reg("source").blob_get_bytes / C.MB,
    "source_requests": lambda s: s.reg("source").requests,
    "target_requests": lambda s: sum(t.requests for t in s.targets),
    "target_manifest_puts": lambda s: sum(t.counts.get("manifest_put", 0) for t in s.targets),
    "target_blob_uploads": lambda s: sum(t.counts.get("upload_put", 0) for t in s.targets),
    "target_mounts": lambda s: sum(t.counts.get("mount", 0) for t in s.targets),
    "registries_cpu_s": lambda s: sum(r.cpu for r in s.registries),
}


# Scenarios skopeo has no pass of: their ratios pair with skopeo in this scenario instead.
BASE_SCENARIO = {
    "noop-run": "noop",
    "noop-many-run": "noop-many",
    "noop-many-recheck": "noop-many",
}
FLOOR_TOOLS = (RequestFloor.name, DAEMON_TOOL)


def summarize(samples: list[Sample]) -> dict[str, Any]:
    """Per scenario and metric: each tool's median, and for every other tool the median of
    its paired ratios to skopeo (``ratio`` for plain syncd, ``ratio:<tool>``). The daemon's
    scenarios pair with skopeo's pass of ``BASE_SCENARIO`` in the same repetition."""
    tools = list(dict.fromkeys(s.tool for s in samples))
    for name in ("syncd", "skopeo"):
        if name not in tools:
            tools.append(name)
    out: dict[str, Any] = {}
    for scenario in dict.fromkeys(s.scenario for s in samples):
        rows: dict[str, Any] = {}
        for metric, fn in METRICS.items():
            row: dict[str, Any] = {}
            per_tool: dict[str, dict[int, float]] = {}
            for tool in tools:
                values = {
                    s.rep: float(v)
                    for s in _pick(samples, tool, scenario)
                    if (v := fn(s)) is not None
                }
                per_tool[tool] = values
                row[tool] = _median(values.values())
            base = per_tool["skopeo"]
            if not base and scenario in BASE_SCENARIO:
                base = {
                    s.rep: float(v)
                    for s in _pick(samples, "skopeo", BASE_SCENARIO[scenario])
                    if (v := fn(s)) is not None
                }
            for tool in tools:
                if tool == "skopeo":
                    continue
                pairs = [v / base[r] for r, v in per_tool[tool].items() if base.get(r, 0) > 0]
                row["ratio" if tool == "syncd" else f"ratio:{tool}"] = _median(pairs)
            rows[metric] = row
        out[scenario] = rows
    return out


def evaluate(
    summary: dict[str, Any],
    samples: list[Sample],
    bound: list[dict[str, float]],
    main: C.Corpus,
    many: C.Corpus | None,
    big_mb: int,
) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and whether it is met."""
    checks: list[dict[str, Any]] = []

    def check(name: str, value: float | None, limit: str, met: bool | None, **more: Any) -> None:
        checks.append({"target": name, "value": value, "limit": limit, "met": met, **more})

    def ratio(scenario: str, metric: str, tool: str = "syncd") -> float | None:
        key = "ratio" if tool == "syncd" else f"ratio:{tool}"
        r = summary.get(scenario, {}).get(metric, {}).get(key)
        return None if r is None else round(r, 3)

    def med(scenario: str, metric: str, tool: str = "syncd") -> float | None:
        v = summary.get(scenario, {}).get(metric, {}).get(tool)
        return None if v is None else float(v)

    def le(v: float | None, limit: float) -> bool | None:
        return None if v is None else v <= limit

    # Figures of a pass that failed or left a wrong digest behind would mean nothing.
    for tool in dict.fromkeys(s.tool for s in samples):
        bad = [s for s in samples if s.tool == tool and (s.proc.failures or s.verified is False)]
        check(f"{tool}: every pass exited 0 and its tags verified", len(bad), "= 0", not bad)
    r = ratio("cold", "wall_s")
    check("cold: wall ≤ 0.5× skopeo", r, "≤ 0.5", le(r, 0.5))
    # Paired too: the bound is measured at the start of each repetition, next to the passes
    # it is compared with, because the machine's speed drifts with the other load on it.
    bound_by_rep = {int(b["rep"]): min(b["download_MBps"], b["upload_MBps"]) for b in bound}
    fracs = [
        main.unique_bytes() / C.MB / s.proc.wall / bound_by_rep[s.rep]
        for s in _pick(samples, "syncd", "cold")
        if s.rep in bound_by_rep and s.proc.wall > 0
    ]
    if fracs:
        frac = round(statistics.median(fracs), 3)
        check("cold: throughput ≥ 60% of the machine's bound", frac, "≥ 0.6", frac >= 0.6)
    r = ratio("cold", "cpu_s")
    check("cold: syncd CPU ≤ 0.5× skopeo", r, "≤ 0.5", le(r, 0.5))
    cold = _pick(samples, "syncd", "cold")
    if cold:
        budgets = []
        for s in cold:
            t = s.targets[0]
            blobs = t.counts.get("upload_put", 0) + t.counts.get("mount", 0)
            budgets.append(t.requests / (6 * main.tag_count + 3 * blobs))
        v = round(max(budgets), 3)
        check("cold: target requests ≤ 6/tag + 3/uploaded blob (used share)", v, "≤ 1", v <= 1)
        uploads = max(s.targets[0].counts.get("upload_put", 0) for s in cold)
        check(
            "cold: each unique blob uploaded once per target (rest mounted)",
            uploads,
            f"= {len(main.unique_blobs())}",
            uploads == len(main.unique_blobs()),
        )
    fan = _pick(samples, "syncd", "fanout")
    if fan:
        read = max(s.reg("source").blob_get_bytes for s in fan)
        check(
            "fan-out: every blob read from the source once (MB read)",
            round(read / C.MB, 1),
            f"= {main.unique_bytes() / C.MB:.1f}",
            read <= main.unique_bytes(),
        )
    r = ratio("fanout", "wall_s")
    check("fan-out to 2: wall ≤ 0.45× skopeo", r, "≤ 0.45", le(r, 0.45))
    incr = _pick(samples, "syncd", "incr")
    if incr:
        new = len(set(main.unique_blobs(main.extra.values())) - set(main.unique_blobs()))
        ups = max(s.targets[0].counts.get("upload_put", 0) for s in incr)
        check("incremental: only the new blobs uploaded", ups, f"= {new}", ups == new)
    for scenario, tags, repos, limit in (
        ("noop", main.tag_count, len(main.repos), 0.5),
        ("noop-many", many.tag_count if many else 0, len(many.repos) if many else 0, 0.1),
    ):
        runs = _pick(samples, "syncd", scenario)
        if not runs:
            continue
        worst = max(max(_non_ping(s.reg("source")), _non_ping(s.targets[0])) for s in runs)
        check(
            f"{scenario}: ≤ 1 request per tag per registry + 1 listing per repo (besides /v2/)",
            worst,
            f"≤ {tags + repos}",
            worst <= tags + repos,
        )
        puts = max(s.targets[0].counts.get("manifest_put", 0) for s in runs)
        check(f"{scenario}: no manifest re-push", puts, "= 0", puts == 0)
        r = ratio(scenario, "wall_s")
        # Next to syncd's figure: whether the target is reachable at all on this machine
        # (the request floor), and syncd without its process start-up (the daemon's pass).
        check(
            f"{scenario}: wall ≤ {limit}× skopeo",
            r,
            f"≤ {limit}",
            le(r, limit),
            floor=ratio(scenario, "wall_s", RequestFloor.name),
            daemon=ratio(f"{scenario}-run", "wall_s", DAEMON_TOOL),
            **(
                {"daemon_target_recheck": ratio(RECHECK_SCENARIO, "wall_s", DAEMON_TOOL)}
                if scenario == "noop-many"
                else {}
            ),
        )
        if scenario == "noop-many":
            w = med(scenario, "wall_s")
            check("noop-many: syncd wall under 30 s", w, "< 30", None if w is None else w < 30)
    imm = _pick(samples, "syncd", "noop-many-immutable")
    if imm and many:
        worst = max(max(_non_ping(s.reg("source")), _non_ping(s.targets[0])) for s in imm)
        check(
            "immutable_tags no-op: one listing per repository, nothing per tag (besides /v2/)",
            worst,
            f"≤ {len(many.repos)} per registry",
            worst <= len(many.repos),
        )
    big = _pick(samples, "syncd", "big-blob")
    if big:
        rss = big[0].proc.rss_mb
        check(f"memory: peak RSS < 100 MB copying a {big_mb} MiB blob", rss, "< 100", rss < 100)
    return checks


def _non_ping(r: RegStats) -> int:
    # The target counts requests per tag and per repository; the one `/v2/` version check
    # per registry and run is neither, and is listed in the JSON counts.
    return r.requests - r.counts.get("ping", 0)


def _fmt(v: float | None, digits: int = 2) -> str:
    if v is None:
        return "–"
    if abs(v) >= 100 or float(v).is_integer():
        return f"{v:.0f}"
    return f"{v:.{digits}f}"


def floors_table(summary: dict[str, Any]) -> list[str]:
    """The no-op passes next to their floors: one row per pass, medians and paired ratios."""
    rows = []
    for scenario in ("noop", "noop-many"):
        if scenario not in summary or all(
            summary.get(s, {}).get("wall_s", {}).get(t) is None
            for s, t in ((scenario, RequestFloor.name), (f"{scenario}-run", DAEMON_TOOL))
        ):
            continue  # no floor measured (--no-floors): syncd and skopeo are in the table above
        for label, scen, tool in (
            ("syncd once", scenario, "syncd"),
            ("syncd run (steady-state pass)", f"{scenario}-run", DAEMON_TOOL),
            (f"syncd run, target_recheck: {RECHECK}", f"{scenario}-recheck", DAEMON_TOOL),
            ("request floor", scenario, RequestFloor.name),
            ("skopeo", scenario, "skopeo"),
        ):
            figures = summary.get(scen)
            if not figures or figures["wall_s"].get(tool) is None:
                continue
            key = {"syncd": "ratio", "skopeo": ""}.get(tool, f"ratio:{tool}")
            cells = [scenario, label, _fmt(figures["wall_s"][tool])]
            cells.append(_fmt(figures["wall_s"].get(key), 3) if key else "1")
            cells += [
                _fmt(figures[m].get(tool))
                for m in ("cpu_s", "registries_cpu_s", "source_requests", "target_requests")
            ]
            rows.append("| " + " | ".join(cells) + " |")
    if not rows:
        return []
    return [
        "",
        "No-op passes and their floors (medians; ratio: paired, to skopeo's pass of the same "
        "scenario and repetition). `syncd run` is a steady-state pass of the daemon (its "
        "second, unless a mark fell into a pass): no interpreter "
        "start-up, no per-process `/v2/` ping. The request floor is a plain aiohttp client "
        "making one `tags/list` per repository and one manifest HEAD per tag at each registry.",
        "",
        "| scenario | pass | wall_s | /skopeo wall | client cpu_s | registries_cpu_s "
        "| source_requests | target_requests |",
        "| --- | --- |" + " ---: |" * 6,
        *rows,
    ]


def startup_lines(startup: list[dict[str, Any]]) -> list[str]:
    if not startup:
        return []
    med = {k: _median(r[k] for r in startup) for k in startup[0] if k != "rep"}
    return [
        "",
        f"Start-up floor (median over {len(startup)} repetition(s) of the median of 5 runs, "
        f"wall s): `import asyncio, aiohttp, pydantic, yaml, prometheus_client` "
        f"{_fmt(med['import_deps_s'], 3)}, `import syncd.cli` "
        f"{_fmt(med['import_syncd_cli_s'], 3)}, `python -m syncd --help` "
        f"{_fmt(med['syncd_help_s'], 3)}.",
    ]


def markdown(
    summary: dict[str, Any],
    checks: list[dict[str, Any]],
    bound: list[Any],
    startup: list[dict[str, Any]] | None = None,
) -> str:
    shown = [
        "wall_s",
        "cpu_s",
        "cpu_sys_s",
        "peak_rss_mb",
        "source_mb_read",
        "source_requests",
        "target_requests",
        "target_manifest_puts",
        "target_blob_uploads",
        "target_mounts",
        "registries_cpu_s",
    ]
    tools = ["syncd", "skopeo"]
    for rows in summary.values():
        for row in rows.values():
            tools += [
                k
                for k in row
                if k not in tools and k != "ratio" and ":" not in k and k not in FLOOR_TOOLS
            ]
    variants = [t for t in tools if t not in ("syncd", "skopeo")]
    head = ["scenario", "metric", *tools, "syncd/skopeo (paired median)"]
    head += [f"{v}/skopeo" for v in variants]
    lines = ["| " + " | ".join(head) + " |", "| --- | --- |" + " ---: |" * (len(head) - 2)]
    for scenario, rows in summary.items():
        for metric in shown:
            row = rows[metric]
            if all(row.get(t) is None for t in tools):
                continue
            cells = [scenario, metric, *(_fmt(row.get(t)) for t in tools)]
            cells.append(_fmt(row.get("ratio"), 3))
            cells += [_fmt(row.get(f"ratio:{v}"), 3) for v in variants]
            lines.append("| " + " | ".join(cells) + " |")
    if bound:
        dl = _median(b["download_MBps"] for b in bound)
        up = _median(b["upload_MBps"] for b in bound)
        cp = _median(b["plain_copy_MBps"] for b in bound)
        lines += [
            "",
            f"Machine bound (median): download {_fmt(dl)} MB/s, upload {_fmt(up)} MB/s; "
            f"a plain GET→PUT copier: {_fmt(cp)} MB/s",
        ]
    lines += floors_table(summary)
    lines += startup_lines(startup or [])
    lines += [
        "",
        f"| target | measured | limit | met | request floor | syncd run "
        f"| syncd run, target_recheck: {RECHECK} |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: |",
    ]
    for c in checks:
        met = {True: "yes", False: "**no**", None: "n/a"}[c["met"]]
        keys = ("floor", "daemon", "daemon_target_recheck")
        extra = [_fmt(c[k], 3) if k in c else "" for k in keys]
        lines.append(
            f"| {c['target']} | {_fmt(c['value'], 3)} | {c['limit']} | {met} | "
            + " | ".join(extra)
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small corpus, few repetitions")
    ap.add_argument("--scale", type=float, help="corpus size factor (full 1.0, quick 0.1)")
    ap.add_argument("--reps", type=int, help="repetitions of cold/noop/incr/fanout")
    ap.add_argument("--many", type=int, help="tags of the no-op-many corpus (0 skips)")
    ap.add_argument("--many-reps", type=int, help="repetitions of the no-op-many pass")
    ap.add_argument("--big", type=int, help="MiB of the big-blob memory scenario (0 skips)")
    ap.add_argument("--bound-streams", type=int, default=4)
    ap.add_argument("--syncd-concurrency", type=int, help="defaults.concurrency for syncd")
    ap.add_argument("--only", choices=["syncd", "skopeo"], help="run one tool only")
    ap.add_argument("--uvloop", action="store_true", help="also run syncd on uvloop")
    ap.add_argument("--profile", action="store_true", help="also profile one syncd cold pass")
    ap.add_argument(
        "--no-floors",
        action="store_true",
        help="skip the request floor, start-up floor and `syncd run` no-op passes",
    )
    args = ap.parse_args(argv)
    quick = {"scale": 0.1, "reps": 2, "many": 500, "many_reps": 1, "big": 128}
    full = {"scale": 1.0, "reps": 5, "many": 5000, "many_reps": 3, "big": 1024}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    # Optional tools are checked before a ten-minute run, not after it.
    missing = []
    if args.profile and not (ROOT / ".venv/bin/py-spy").exists():
        missing.append("py-spy")
    if args.profile and importlib.util.find_spec("pyinstrument") is None:
        missing.append("pyinstrument")
    if args.uvloop and importlib.util.find_spec("uvloop") is None:
        missing.append("uvloop")
    if missing:
        ap.error(f"install into the venv first: .venv/bin/pip install {' '.join(missing)}")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    # syncd is measured as an installed package runs: with bytecode. A checkout run with
    # PYTHONDONTWRITEBYTECODE (set in containers and in some shells) would otherwise
    # compile syncd's modules in every pass, ~50 ms of CPU that no installed copy pays.
    compileall.compile_dir(str(ROOT / "syncd"), quiet=1)
    t0 = time.perf_counter()
    main_corpus = C.build_main(args.scale)
    many = C.build_many(args.many) if args.many else None
    big = C.build_big(args.big) if args.big else None
    print(f"corpora ready in {time.perf_counter() - t0:.1f}s: {main_corpus.summary()}",
          file=sys.stderr)  # fmt: skip
    bench = Bench(args)
    if args.only:
        bench.tools = [t for t in bench.tools if t.name == args.only]
    error = None
    try:
        # The most tmpfs any scenario holds at once: a source and two fan-out targets,
        # or the big blob at a source and a target (plus headroom).
        need = max(4 * main_corpus.unique_bytes(), 3 * big.unique_bytes() if big else 0)
        print(f"  warmed {need / C.MB / 1024:.1f} GiB of tmpfs in {warm_memory(need):.1f}s",
              file=sys.stderr)  # fmt: skip
        src = bench.registry()
        asyncio.run(C.push(src.url, main_corpus))
        bench.main_corpus(main_corpus, src)
        if many:
            bench.many_tags(many)
        if big:
            bench.big_blob(big)
        if args.profile:
            bench.profile(main_corpus, src, many)
    except Exception as e:
        # Keep what was measured: the JSON and table below still get written.
        error = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    finally:
        bench.close()
    summary = summarize(bench.samples)
    checks = evaluate(summary, bench.samples, bench.bound, main_corpus, many, args.big)
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "args": vars(args),
        "machine": {"cpus": os.cpu_count(), "load": os.getloadavg()},
        "corpora": {
            "main": main_corpus.summary(),
            "many": many.summary() if many else None,
            "big": big.summary() if big else None,
        },
        "summary": summary,
        "checks": checks,
        "bound": bench.bound,
        "startup": bench.startup,
        "samples": [asdict(s) for s in bench.samples],
        "extras": bench.extras,
        "error": error,
        "elapsed_s": time.perf_counter() - t0,
    }
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    text = json.dumps(doc, indent=1, default=str)
    (OUT_DIR / f"results-{stamp}.json").write_text(text)
    (OUT_DIR / "results.json").write_text(text)
    print(markdown(summary, checks, bench.bound, bench.startup))
    print(f"\n{len(bench.samples)} passes in {doc['elapsed_s']:.0f}s; "
          f"JSON: bench/out/results-{stamp}.json", file=sys.stderr)  # fmt: skip
    if error:
        print(f"bench stopped early: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
