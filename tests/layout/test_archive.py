"""``oci-archive:`` sources: archives written by skopeo, by Python's tarfile from a layout,
and laid out as ``docker save`` (Docker 25+) writes them; repository names come from the
index annotations."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.helpers import passes
from tests.helpers.images import image, layer, multiarch, push
from tests.helpers.registry import Registry, RegistryFactory, manifest_raw, tags
from tests.layout.conftest import docker_save_archive, run_syncd, skopeo_copy, tar_layout


async def test_skopeo_archive_names_its_repository(
    registries: RegistryFactory, tmp_path: Path
) -> None:
    seed, target = registries(), registries()
    idx = multiarch("arc-sk")
    push(seed.url, "team/app", "v2", idx)
    archive = tmp_path / "export.tar"
    # skopeo writes the whole reference into ref.name: example.com/team/app:v2
    skopeo_copy(
        f"docker://{seed.host}/team/app:v2", f"oci-archive:{archive}:example.com/team/app:v2"
    )
    result = await passes.sync(passes.make_config(f"oci-archive:{archive}", [target], ["**"]))
    assert (result.synced, result.failed) == (1, 0), result.failures
    assert tags(target.url, "team/app") == ["v2"]
    assert manifest_raw(target.url, "team/app", "v2") == idx.raw


async def test_tarfile_archive_of_a_layout_uses_the_file_name(
    source: Registry, target: Registry, tmp_path: Path
) -> None:
    v1, v2 = image("arc-t1"), multiarch("arc-t2")
    push(source.url, "app", "v1", v1)
    push(source.url, "app", "v2", v2)
    oci = tmp_path / "oci"
    assert (await passes.sync(passes.make_config(source, [f"oci:{oci}"], ["app"]))).failed == 0
    archive = tar_layout(oci / "app", tmp_path / "shipment.tar")
    cfg = passes.make_config(f"oci-archive:{archive}", [target], ["shipment"], target_prefix="in/")
    result = await passes.sync(cfg)
    assert (result.synced, result.failed) == (2, 0), result.failures
    assert tags(target.url, "in/shipment") == ["v1", "v2"]
    assert manifest_raw(target.url, "in/shipment", "v1") == v1.raw
    assert manifest_raw(target.url, "in/shipment", "v2") == v2.raw


def test_docker_save_archive_imports_with_syncd_once(target: Registry, tmp_path: Path) -> None:
    base = layer("ds-base", 4096)
    alpine = image("ds-alpine", shared=[base], docker=True)
    tool = image("ds-tool", shared=[base])
    multi = multiarch("ds-multi")
    archive = docker_save_archive(
        tmp_path / "images.tar",
        [
            ("docker.io/library/alpine", "3.19", alpine),
            ("ghcr.io/org/tool", "1.0", tool),
            ("ghcr.io/org/tool", "latest", tool),
            ("registry.example.com:5000/team/multi", "v1", multi),
        ],
    )
    cfg = tmp_path / "import.yaml"
    cfg.write_text(
        "registries:\n"
        f"  saved: {{url: 'oci-archive:{archive}'}}\n"
        f"  local: {{url: '{target.url}'}}\n"
        "rules:\n"
        "  - {name: import, source: saved, targets: [local], repositories: ['**'],"
        " target_prefix: imported/}\n"
    )
    r = run_syncd("-c", str(cfg), "once")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1].startswith("summary: images synced=4 skipped=0 failed=0")
    assert manifest_raw(target.url, "imported/library/alpine", "3.19") == alpine.raw
    assert tags(target.url, "imported/org/tool") == ["1.0", "latest"]
    assert manifest_raw(target.url, "imported/org/tool", "1.0") == tool.raw
    assert manifest_raw(target.url, "imported/team/multi", "v1") == multi.raw
    # A second import finds everything there.
    r = run_syncd("-c", str(cfg), "once")
    assert r.stdout.splitlines()[-1].startswith("summary: images synced=0 skipped=4 failed=0")


async def test_corrupt_blob_in_archive_names_archive_and_member(
    target: Registry, tmp_path: Path
) -> None:
    good, bad = image("ac-good"), image("ac-bad")
    archive = docker_save_archive(
        tmp_path / "images.tar", [("example.com/good", "1", good), ("example.com/bad", "1", bad)]
    )
    data = bytearray(archive.read_bytes())
    victim = bad.layers[0].data
    at = data.find(victim)
    data[at + len(victim) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    result = await passes.sync(passes.make_config(f"oci-archive:{archive}", [target], ["*"]))
    assert (result.synced, result.failed) == (1, 1), result.failures
    [failure] = result.failures
    digest = "sha256:" + hashlib.sha256(victim).hexdigest()
    assert f"{archive}:blobs/sha256/{digest[7:]}" in failure and "digest mismatch" in failure
    assert tags(target.url, "bad") == []
    assert manifest_raw(target.url, "good", "1") == good.raw


async def test_partial_index_from_docker_save_needs_a_platform_filter(
    target: Registry, tmp_path: Path
) -> None:
    multi = multiarch("ds-partial")  # linux/amd64 saved, linux/arm64 left out
    archive = docker_save_archive(
        tmp_path / "images.tar", [("docker.io/library/app", "1", multi)], leave_out=multi
    )
    arm64 = multi.children[1][0]
    whole = await passes.sync(passes.make_config(f"oci-archive:{archive}", [target], ["**"]))
    assert whole.failed == 1
    assert f"blobs/sha256/{arm64.digest[7:]} is missing" in whole.failures[0]
    assert tags(target.url, "library/app") == []

    cfg = passes.make_config(f"oci-archive:{archive}", [target], ["**"], platforms=("linux/amd64",))
    result = await passes.sync(cfg)
    assert (result.synced, result.failed) == (1, 0), result.failures
    amd64 = multi.children[0][0]
    assert manifest_raw(target.url, "library/app", amd64.digest) == amd64.raw
    assert tags(target.url, "library/app") == ["1"]
