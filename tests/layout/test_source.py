"""A layout as a source: written by an independent tool (skopeo), read with every blob
verified; what is broken fails the images it concerns, naming the file, and nothing else."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.helpers import passes
from tests.helpers.images import image, multiarch, push
from tests.helpers.registry import Registry, RegistryFactory, manifest_raw, tags
from tests.layout.conftest import skopeo_copy


@pytest.fixture
def seeded(registries: RegistryFactory, tmp_path: Path) -> tuple[Registry, Path]:
    """A registry with app:v1, app:v2 (an index) and tool:1.0, and skopeo's ``oci:`` copy."""
    seed = registries()
    push(seed.url, "app", "v1", image("src-1"))
    push(seed.url, "app", "v2", multiarch("src-2"))
    push(seed.url, "tool", "1.0", image("src-3"))
    oci = tmp_path / "oci"
    (oci / "app").mkdir(parents=True)
    (oci / "tool").mkdir()
    for repo, tag in (("app", "v1"), ("app", "v2"), ("tool", "1.0")):
        skopeo_copy(f"docker://{seed.host}/{repo}:{tag}", f"oci:{oci}/{repo}:{tag}")
    return seed, oci


def blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def test_skopeo_layouts_copy_with_digests(
    seeded: tuple[Registry, Path], target: Registry
) -> None:
    seed, oci = seeded
    result = await passes.sync(passes.make_config(f"oci:{oci}", [target], ["*"]))
    assert (result.synced, result.failed) == (3, 0), result.failures
    for repo, tag in (("app", "v1"), ("app", "v2"), ("tool", "1.0")):
        assert manifest_raw(target.url, repo, tag) == manifest_raw(seed.url, repo, tag)


async def test_corrupt_blob_fails_that_image_naming_the_file(
    seeded: tuple[Registry, Path], target: Registry
) -> None:
    seed, oci = seeded
    raw = manifest_raw(seed.url, "app", "v1")
    assert raw is not None
    layer_digest = json.loads(raw)["layers"][0]["digest"]
    path = blob(oci / "app", layer_digest)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(data))

    result = await passes.sync(passes.make_config(f"oci:{oci}", [target], ["app", "tool"]))
    assert (result.synced, result.failed) == (2, 1)
    [failure] = result.failures
    assert "app:v1" in failure and str(path) in failure and "digest mismatch" in failure
    assert tags(target.url, "app") == ["v2"]
    assert manifest_raw(target.url, "tool", "1.0") == manifest_raw(seed.url, "tool", "1.0")


async def test_missing_blob_and_corrupt_manifest_name_their_files(
    seeded: tuple[Registry, Path], target: Registry
) -> None:
    seed, oci = seeded
    v1 = manifest_raw(seed.url, "app", "v1")
    assert v1 is not None
    config_digest = json.loads(v1)["config"]["digest"]
    gone = blob(oci / "app", config_digest)
    gone.unlink()
    tool = manifest_raw(seed.url, "tool", "1.0")
    assert tool is not None
    bad = blob(oci / "tool", sha(tool))
    bad.write_bytes(tool.replace(b"schemaVersion", b"schemaversion"))

    result = await passes.sync(passes.make_config(f"oci:{oci}", [target], ["app", "tool"]))
    assert (result.synced, result.failed) == (1, 2), result.failures
    text = "\n".join(result.failures)
    assert f"blobs/sha256/{config_digest[7:]} is missing" in text
    assert str(bad) in text and "digest mismatch" in text


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda layout: (layout / "oci-layout").unlink(), "oci-layout is missing"),
        (lambda layout: (layout / "index.json").write_text("{not json"), "index.json is not"),
        (lambda layout: (layout / "oci-layout").write_text("[]"), "oci-layout has no"),
    ],
    ids=["no-oci-layout", "bad-index-json", "bad-oci-layout"],
)
async def test_invalid_layout_fails_its_repository_naming_the_file(
    seeded: tuple[Registry, Path], target: Registry, damage: object, named: str
) -> None:
    seed, oci = seeded
    damage(oci / "app")  # type: ignore[operator]
    result = await passes.sync(passes.make_config(f"oci:{oci}", [target], ["*"]))
    assert result.failed == 1 and result.synced == 1, result.failures
    [failure] = result.failures
    assert str(oci / "app") in failure and named in failure
    assert manifest_raw(target.url, "tool", "1.0") == manifest_raw(seed.url, "tool", "1.0")


async def test_malformed_index_entry_fails_that_tag_naming_index_json(
    seeded: tuple[Registry, Path], target: Registry
) -> None:
    seed, oci = seeded
    index = oci / "app" / "index.json"
    doc = json.loads(index.read_text())
    for e in doc["manifests"]:
        if e["annotations"]["org.opencontainers.image.ref.name"] == "v1":
            e["size"] = "big"
    index.write_text(json.dumps(doc))
    result = await passes.sync(passes.make_config(f"oci:{oci}", [target], ["app"]))
    assert (result.synced, result.failed) == (1, 1), result.failures
    assert f"{index}: the entry of tag v1 is not a valid descriptor" in result.failures[0]
    assert manifest_raw(target.url, "app", "v2") == manifest_raw(seed.url, "app", "v2")
