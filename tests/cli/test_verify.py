"""``syncd verify`` as a subprocess against real registries whose targets are then damaged."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.cli.test_cli import run, write_config
from tests.helpers.images import image, layer, multiarch, push
from tests.helpers.registry import Registry, http, manifest_raw
from tests.referrers.conftest import SBOM_TYPE, artifact, attach, cosign_signature

REPO = "team/app"
BASE = [layer("verify-base", 4096)]


def _synced(source: Registry, target: Registry, tmp_path: Path, **rule: object) -> Path:
    cfg = write_config(tmp_path / "c.yaml", source, [target], repositories=[REPO], **rule)
    r = run("-c", str(cfg), "once")
    assert r.returncode == 0, r.stdout + r.stderr
    return cfg


def _verify(cfg: Path, *extra: str) -> tuple[int, list[str]]:
    r = run("-c", str(cfg), "verify", *extra)
    lines = r.stdout.strip().splitlines()
    assert lines and lines[-1].startswith("verify: "), r.stdout + r.stderr
    return r.returncode, lines[:-1]


def _delete_manifest(reg: Registry, repo: str, digest: str) -> None:
    status, _, body = http("DELETE", f"{reg.url}/v2/{repo}/manifests/{digest}")
    assert status == 202, (status, body)


@pytest.fixture
def images(source: Registry) -> dict[str, str]:
    """Two images sharing a base layer, and a two-platform index; tag -> digest."""
    return {
        "v1": push(source.url, REPO, "v1", image("verify-1", layers=1, shared=BASE)),
        "v2": push(source.url, REPO, "v2", image("verify-2", layers=1, shared=BASE)),
        "multi": push(source.url, REPO, "multi", multiarch("verify-m", layers=1)),
    }


def test_clean_targets_verify_with_reads_only_and_one_head_per_blob(
    source: Registry, target: Registry, images: dict[str, str], tmp_path: Path
) -> None:
    cfg = _synced(source, target, tmp_path)
    smark, tmark = source.log_mark(), target.log_mark()
    status, problems = _verify(cfg)
    assert (status, problems) == (0, [])
    for reg, mark in ((source, smark), (target, tmark)):
        accesses = reg.accesses(mark, "syncd/")
        assert accesses and {a.method for a in accesses} <= {"GET", "HEAD"}, accesses
    heads = Counter(a.path for a in target.accesses(tmark, "syncd/") if a.kind == "blob_head")
    # v1 and v2 share the base layer: asked once. 2 images x (config + 2 layers) - 1 shared
    # + 2 platform images x (config + 1 layer) = 9 blobs, each once.
    assert len(heads) == 9 and set(heads.values()) == {1}, heads


def test_a_blob_deleted_from_the_target_storage_is_one_problem(
    source: Registry, target: Registry, images: dict[str, str], tmp_path: Path
) -> None:
    cfg = _synced(source, target, tmp_path)
    target.blob_path(BASE[0].digest).unlink()
    status, problems = _verify(cfg)
    assert status == 1
    # Referenced by v1 and v2, reported once for the repository.
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"missing blob: t0/{REPO}@{BASE[0].digest} (in t0/{REPO}:v")


def test_a_retagged_and_a_missing_tag_at_the_target(
    source: Registry, target: Registry, images: dict[str, str], tmp_path: Path
) -> None:
    cfg = _synced(source, target, tmp_path)
    other = push(target.url, REPO, "v1", image("verify-other", layers=1))
    _delete_manifest(target, REPO, images["v2"])
    status, problems = _verify(cfg)
    assert status == 1
    assert sorted(problems) == [
        f"digest differs: t0/{REPO}:v1 (target has {other}, expected {images['v1']})",
        f"missing tag: t0/{REPO}:v2 (src/{REPO}:v2 is {images['v2']})",
    ]
    # --rule limits it, and an unknown rule is a config error.
    assert _verify(cfg, "--rule", "app")[0] == 1
    r = run("-c", str(cfg), "verify", "--rule", "nope")
    assert r.returncode == 2 and "no rule named 'nope'" in r.stderr


def test_a_missing_index_child_and_platform_filtered_digests(
    source: Registry, target: Registry, images: dict[str, str], tmp_path: Path
) -> None:
    cfg = _synced(source, target, tmp_path, tags=["multi"], platforms=["linux/arm64"])
    # The target holds the filtered index (one child), not the source's digest.
    assert _verify(cfg) == (0, [])
    # The unfiltered source index at the target is a different digest.
    cfg_all = write_config(tmp_path / "all.yaml", source, [target], repositories=[REPO])
    assert run("-c", str(cfg_all), "once").returncode == 0
    status, problems = _verify(cfg)
    assert status == 1
    assert problems[0].startswith(f"digest differs: t0/{REPO}:multi (target has {images['multi']}")
    # Back in step for the whole index, then one child disappears at the target.
    assert _verify(cfg_all) == (0, [])
    child = json.loads(manifest_raw(source.url, REPO, "multi") or b"")["manifests"][0]
    _delete_manifest(target, REPO, child["digest"])
    status, problems = _verify(cfg_all)
    assert status == 1
    assert f"missing manifest: t0/{REPO}@{child['digest']} (t0/{REPO}:multi)" in problems


def test_referrers_kept_in_tags_are_checked(
    source: Registry, target: Registry, tmp_path: Path
) -> None:
    subject = image("verify-signed", layers=1)
    push(source.url, REPO, "v1", subject)
    sig = cosign_signature(source, REPO, subject, "verify-sig")
    sbom = artifact(subject, SBOM_TYPE, "verify-sbom")
    attach(source, REPO, sbom)
    cfg = _synced(source, target, tmp_path)
    assert _verify(cfg) == (0, [])
    sig_tag = subject.digest.replace(":", "-") + ".sig"
    _delete_manifest(target, REPO, sig.digest)
    target.blob_path(sbom.layers[0].digest).unlink()
    status, problems = _verify(cfg)
    assert status == 1
    assert sorted(problems) == [
        f"missing blob: t0/{REPO}@{sbom.layers[0].digest} (in referrer of t0/{REPO}:v1)",
        f"missing tag: t0/{REPO}:{sig_tag} (src/{REPO}:{sig_tag} is {sig.digest})",
    ]
    # A rule that does not copy referrers does not check them.
    cfg = write_config(
        tmp_path / "c2.yaml", source, [target], repositories=[REPO], referrers=False, tags=["v1"]
    )
    assert _verify(cfg) == (0, [])


def test_verify_of_an_invalid_config_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("registries: {}\nrules: []\n")
    r = run("-c", str(cfg), "verify")
    assert r.returncode == 2
