"""Faults caused for real around ``syncd once`` subprocesses, with an integrity poller.

While each scenario runs, a poller walks every tag of the target every ~100 ms (tags →
manifest → children → blob HEADs) and records any tag that resolves to something missing.
Every scenario must end with zero violations: blobs go first, then children, then the
tagged manifest, so no kill, reset or corruption can leave a tag pointing at a hole.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.faults.conftest import (
    MB,
    IntegrityPoller,
    big_image,
    once_cmd,
    run_once,
    summary,
    wait_for,
    write_config,
)
from tests.helpers.images import Image, image, multiarch, push
from tests.helpers.registry import Registry, http, manifest_raw, tags

REPO = "team/app"


def seed(source: Registry, n: int, *, size: int = 200_000, layers: int = 2) -> dict[str, bytes]:
    """``n`` tags of distinct images (every third an index); returns tag -> manifest."""
    out: dict[str, bytes] = {}
    for i in range(n):
        img = (
            multiarch(f"m{i}", size=size // 2, layers=1)
            if i % 3 == 2
            else image(f"s{i}", layers=layers, size=size)
        )
        push(source.url, REPO, f"v{i}", img)
        out[f"v{i}"] = img.raw
    return out


def assert_mirrored(target: Registry, expected: dict[str, bytes]) -> None:
    assert tags(target.url, REPO) == sorted(expected)
    for tag, raw in expected.items():
        assert manifest_raw(target.url, REPO, tag) == raw, tag


def log_count(reg: Registry, needle: str) -> int:
    return reg.log_text().count(needle)


def test_target_killed_mid_pass_then_next_pass_completes(
    tmp_path: Path, source: Registry, target: Registry
) -> None:
    expected = seed(source, 9, size=300_000, layers=3)
    cfg = write_config(tmp_path / "c.yaml", source.url, [target.url], [REPO], retries=3)
    with IntegrityPoller(target.url) as poller:
        start = time.monotonic()
        proc = subprocess.Popen(
            once_cmd(cfg), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            wait_for(lambda: log_count(target, '"PUT /v2/team/app/manifests/') >= 2, 20, "pushes")
            target.kill()
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        first = time.monotonic() - start
        assert proc.returncode == 1, err[-2000:]
        s = summary(out)
        assert s["failed"] >= 1 and s["synced"] >= 1, out
        target.start()  # same port, same storage
        start = time.monotonic()
        again = run_once(cfg)
        second = time.monotonic() - start
        assert again.returncode == 0, again.stderr[-2000:]
        after = poller.sweeps  # two more: one of them starts after the pass ended
        wait_for(lambda: poller.sweeps >= after + 2, 30, "a sweep over the finished state")
    print(f"\nkilled target: first pass {first:.1f}s ({out.strip()}), second {second:.1f}s")
    print(
        f"poller: {poller.sweeps} sweeps, {poller.tags_checked} tag checks, "
        f"{len(poller.unresolved)} sightings of listed-but-unresolvable tags "
        f"{sorted(set(poller.unresolved))}"
    )
    assert poller.violations == []
    assert poller.sweeps >= 5
    assert_mirrored(target, expected)


def test_a_fifth_of_connections_reset_and_once_still_succeeds(
    tmp_path: Path, source: Registry, target: Registry, proxies: object
) -> None:
    expected = seed(source, 18)
    # 20% of connections die by RST somewhere in their first 512 KiB, either way. aiohttp
    # keeps connections alive, so that is a few faults per pass (seeded: the same
    # connections, by order of arrival, are chosen every run).
    sproxy = proxies(source.port, reset_fraction=0.2, seed=11)  # type: ignore[operator]
    tproxy = proxies(target.port, reset_fraction=0.2, seed=12)  # type: ignore[operator]
    # Default retries (5), as an operator would run it.
    cfg = tmp_path / "c.yaml"
    write_config(cfg, sproxy.url, [tproxy.url], [REPO])
    text = cfg.read_text().replace("defaults:\n  retries: 5\n", "")
    cfg.write_text(text)
    with IntegrityPoller(target.url) as poller:
        start = time.monotonic()
        done = run_once(cfg, timeout=120)
        seconds = time.monotonic() - start
    retries = done.stderr.count("retrying")
    print(
        f"\nresets: source {sproxy.resets}/{sproxy.connections} connections, target "
        f"{tproxy.resets}/{tproxy.connections}; {retries} retries logged; {seconds:.1f}s"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert sproxy.resets + tproxy.resets >= 1, "the proxy injected no fault"
    assert retries >= 1
    assert poller.violations == []
    assert_mirrored(target, expected)


def test_corrupt_source_blob_refuses_that_image_only(
    tmp_path: Path, source: Registry, target: Registry
) -> None:
    expected = seed(source, 4)
    bad = image("bad", layers=2, size=200_000)
    push(source.url, REPO, "broken", bad)
    path = source.blob_path(bad.layers[1].digest)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(data))
    cfg = write_config(tmp_path / "c.yaml", source.url, [target.url], [REPO], retries=2)
    with IntegrityPoller(target.url) as poller:
        done = run_once(cfg)
    assert done.returncode == 1, done.stderr[-2000:]
    s = summary(done.stdout)
    assert s["failed"] == 1 and s["synced"] == len(expected), done.stdout
    assert "digest mismatch" in done.stderr
    assert_mirrored(target, expected)  # every other tag, and not "broken"
    status, _, _ = http("HEAD", f"{target.url}/v2/{REPO}/blobs/{bad.layers[1].digest}")
    assert status == 404, "the corrupt blob was committed"
    bad_sha = "sha256:" + hashlib.sha256(bytes(data)).hexdigest()
    status, _, _ = http("HEAD", f"{target.url}/v2/{REPO}/blobs/{bad_sha}")
    assert status == 404
    assert poller.violations == []


def test_syncd_sigkilled_mid_pass_then_rerun_converges(
    tmp_path: Path, source: Registry, target: Registry
) -> None:
    expected = seed(source, 4)
    big: Image = big_image("kill", 40 * MB)
    push(source.url, REPO, "big", big)
    expected["big"] = big.raw
    cfg = write_config(tmp_path / "c.yaml", source.url, [target.url], [REPO])
    with IntegrityPoller(target.url) as poller:
        proc = subprocess.Popen(once_cmd(cfg), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            # Killed in the middle of the chunked upload of the 40 MB layer.
            wait_for(
                lambda: log_count(target, '"PATCH /v2/team/app/blobs/uploads/') >= 1, 30, "a PATCH"
            )
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        assert proc.returncode == -signal.SIGKILL
        half = set(tags(target.url, REPO))
        again = run_once(cfg)
        assert again.returncode == 0, again.stderr[-2000:]
        after = poller.sweeps
        wait_for(lambda: poller.sweeps >= after + 2, 30, "a sweep over the finished state")
    print(f"\nsyncd killed with {len(half)} of {len(expected)} tags at the target; rerun ok")
    assert poller.violations == []
    assert "big" not in half, "the kill came too late to test anything"
    assert_mirrored(target, expected)
