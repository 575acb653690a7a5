"""Checks of the benchmark's own machinery: ``.venv/bin/pytest bench/test_bench.py -q``.

Not part of the suite under tests/ (it measures nothing about syncd); it keeps the corpus
deterministic and the figures honest: digests stable across builds, layers that are real
gzip'd tars, the access-log accounting and the soak's slope.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import corpus as C
from bench import run as R
from bench.soak import PassSample, report, slope
from tests.helpers.registry import RegistryFactory


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[RegistryFactory]:
    f = RegistryFactory(tmp_path)
    try:
        yield f
    finally:
        f.close()


def test_corpus_is_deterministic_and_shares_base_layers(tmp_path: Path) -> None:
    a = C.build_main(0.01, root=tmp_path / "a")
    b = C.build_main(0.01, root=tmp_path / "b")
    assert a.sizes == b.sizes
    assert {k: r.tags for k, r in a.repos.items()} == {k: r.tags for k, r in b.repos.items()}
    assert len(a.repos) == 12 and a.tag_count == 60
    # Base layers are shared: fewer unique blobs than placements across repositories.
    assert len(a.unique_blobs()) < a.blob_placements()
    indexes = [d for d in a.media_types.values() if d == C.OCI_INDEX]
    assert len(indexes) == 17  # 4 multi-platform repositories × 4 images, + app01:1.4
    # The incremental image is built but not part of the seeded repositories.
    assert a.extra["app01"].tags["1.4"] not in a.repos["app01"].tags.values()


def test_layers_are_gzipped_tars_matching_the_config_diff_ids(tmp_path: Path) -> None:
    corpus = C.build_main(0.01, root=tmp_path)
    manifest = json.loads(corpus.read(corpus.repos["app02"].tags["1.0"]))
    config = json.loads(corpus.read(manifest["config"]["digest"]))
    for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
        raw = gzip.decompress(corpus.read(layer["digest"]))
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == diff_id
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            (member,) = tar.getmembers()
            assert member.size > 0
        assert layer["size"] == corpus.sizes[layer["digest"]]


async def test_seed_verify_and_count_from_access_logs(
    tmp_path: Path, factory: RegistryFactory
) -> None:
    corpus = C.build_main(0.01, root=tmp_path / "c")
    reg = factory()
    mark = reg.log_mark()
    await C.push(reg.url, corpus)
    reg.settle()
    stats = R.reg_stats(reg, "source", mark, C.SEEDER_AGENT, 0.0)
    # Each unique blob is uploaded once; its other placements are mounted.
    assert stats.counts["upload_put"] == len(corpus.unique_blobs())
    assert stats.counts["mount"] == corpus.blob_placements() - len(corpus.unique_blobs())
    assert stats.errors == 0
    assert await R._verify(reg.url, corpus, corpus.repos)
    # The incremental tag is not there until pushed, and is gone again after its delete.
    assert not await R._verify(reg.url, corpus, corpus.extra)
    await C.push(reg.url, corpus, repos=corpus.extra)
    assert await R._verify(reg.url, corpus, corpus.extra)
    await C.delete_manifest(reg.url, "app01", corpus.extra["app01"].tags["1.4"])
    assert not await R._verify(reg.url, corpus, corpus.extra)
    # The request floor makes exactly the no-op budget at each registry (here one, twice).
    mark = reg.log_mark()
    assert await R.request_floor(reg.url, [reg.url], list(corpus.repos)) == []
    reg.settle()
    floor = R.reg_stats(reg, "source", mark, R.RequestFloor.agent, 0.0)
    assert floor.counts == {
        "manifest_head": 2 * corpus.tag_count,
        "tags_list": 2 * len(corpus.repos),
    }


def test_slope_and_paired_summary() -> None:
    assert slope([1.0, 2.0, 3.0, 4.0]) == pytest.approx(1.0)
    assert slope([5.0, 5.0, 5.0]) == 0.0

    def sample(tool: str, rep: int, wall: float) -> R.Sample:
        return R.Sample(tool, "cold", rep, R.ProcStats(wall=wall), [R.RegStats("source")])

    samples = [sample("syncd", 0, 1.0), sample("skopeo", 0, 4.0)]
    samples += [sample("syncd", 1, 3.0), sample("skopeo", 1, 4.0)]
    row = R.summarize(samples)["cold"]["wall_s"]
    assert row["syncd"] == 2.0 and row["skopeo"] == 4.0
    assert row["ratio"] == pytest.approx((0.25 + 0.75) / 2)


def test_soak_flags_growth_but_not_noise() -> None:
    args = argparse.Namespace(warmup=2, max_rss_growth_mb=16.0, max_fd_growth=8.0)
    flat = [PassSample(i, 1.0, 50.0 + (i % 2) * 0.5, 20, 60.0) for i in range(20)]
    assert report(args, flat)["ok"]
    leaking = [PassSample(i, 1.0, 50.0 + i * 2.0, 20 + i, 60.0) for i in range(20)]
    result = report(args, leaking)
    assert not result["ok"]
    assert result["rss_growth_mb"] == pytest.approx(36.0)
    assert result["fd_growth"] == pytest.approx(18.0)


def test_metric_value_reads_prometheus_text() -> None:
    text = "\n".join(
        [
            "# HELP syncd_sync_duration_seconds Duration of one pass of a rule",
            "# TYPE syncd_sync_duration_seconds histogram",
            'syncd_sync_duration_seconds_bucket{le="0.5",rule="bench"} 1.0',
            'syncd_sync_duration_seconds_count{rule="other"} 7.0',
            'syncd_sync_duration_seconds_count{rule="bench"} 2.0',
            'syncd_sync_duration_seconds_sum{rule="bench"} 0.8125',
            "syncd_sync_duration_seconds_created 1.7e+09",
        ]
    )
    name = "syncd_sync_duration_seconds"
    assert R.metric_value(text, f"{name}_count", rule="bench") == 2.0
    assert R.metric_value(text, f"{name}_sum", rule="bench") == 0.8125
    assert R.metric_value(text, f"{name}_count", rule="nope") is None
    assert R.metric_value(text, f"{name}_created") == 1.7e9
    assert R.metric_value("", f"{name}_count", rule="bench") is None


def test_daemon_pairs_with_skopeos_noop_and_floor_has_no_rss() -> None:
    def sample(
        tool: str, scenario: str, rep: int, wall: float, in_process: bool = False
    ) -> R.Sample:
        proc = R.ProcStats(wall=wall, rss_mb=30.0, in_process=in_process)
        return R.Sample(tool, scenario, rep, proc, [R.RegStats("source")])

    samples = [
        sample("skopeo", "noop", 0, 2.0),
        sample("syncd", "noop", 0, 1.0),
        sample("request floor", "noop", 0, 0.2, in_process=True),
        sample("syncd run", "noop-run", 0, 0.5),
    ]
    summary = R.summarize(samples)
    assert summary["noop"]["wall_s"]["ratio:request floor"] == pytest.approx(0.1)
    assert summary["noop"]["peak_rss_mb"]["request floor"] is None
    assert summary["noop-run"]["wall_s"]["ratio:syncd run"] == pytest.approx(0.25)
    table = "\n".join(R.floors_table(summary))
    assert "| noop | syncd run (steady-state pass) | 0.50 | 0.250 |" in table
    assert "| noop | request floor | 0.20 | 0.100 |" in table


def test_daemon_bench_pairs_passes_with_the_floor_and_restarts(tmp_path: Path) -> None:
    """bench.daemon's machinery: a paused daemon makes exactly one pass per pair, each
    with the floor's requests, and a restart asks the same plus one ping per registry."""
    from bench.daemon import run

    # Two pairs: the floor runs first in one and second in the other.
    result = run(tags=60, pairs=2, recheck=None, workdir=tmp_path, floor_loop="uvloop")
    assert (result["floor_loop"], result["daemon_loop"]) == ("uvloop", "uvloop")
    steady = {"tags_list": 5, "manifest_head": 60}
    for pair in result["pairs"]:
        assert pair["floor"]["wall"] > 0 and pair["daemon"]["wall"] > 0
        assert pair["daemon"]["source_requests"] == steady
        assert pair["daemon"]["target_requests"] == {"manifest_head": 60}
    first = result["restart_first_pass"]
    assert first["source_requests"] == {**steady, "ping": 1}
    assert first["target_requests"] == {"manifest_head": 60, "ping": 1}
    assert result["restart_steady_pass"]["source_requests"] == steady
